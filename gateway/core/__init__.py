"""Pure decisions: no I/O, no aiohttp, redis or prometheus imports; time is passed in."""
