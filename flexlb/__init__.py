"""FlexLB: a gRPC-native load-balancing gateway for RTP-LLM inference clusters."""

__version__ = "0.1.0"
