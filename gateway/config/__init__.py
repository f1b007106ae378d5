"""Configuration: the typed model, its strict loader and its JSON Schema."""
