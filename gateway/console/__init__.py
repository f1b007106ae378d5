"""The operators' console at ``/_gateway/``: one page with its script and style sheet,
shipped as package data and served by the gateway itself."""
