"""The grpc.aio engine: grpc C-core terminates each call and the gateway re-originates it on a pooled channel."""
