"""Everything that talks to workers: channel pool (and later discovery, health checks, polling)."""
