"""The balancer core: pure Python, no grpc and no asyncio; time and randomness are injected."""
