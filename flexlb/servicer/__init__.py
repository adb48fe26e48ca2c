"""grpc.aio servicers of the gateway: the RpcService relay, FlexlbService, health, reflection."""
