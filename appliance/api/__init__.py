"""The Restcomm-compatible REST API on aiohttp. Talks to services only."""
