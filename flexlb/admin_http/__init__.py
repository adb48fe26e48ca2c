"""The aiohttp sidecar: health, metrics, info (and the consistency endpoints with HA)."""
