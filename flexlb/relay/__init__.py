"""The relay engines: each moves one call's bytes between a client and a worker; `flexlb.call` decides."""
