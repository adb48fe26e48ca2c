"""The HTTP/2 frame relay engine: gRPC relayed without terminating it in Python."""
