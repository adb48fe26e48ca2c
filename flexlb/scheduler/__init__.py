"""FlexlbService: the decision API the RTP-LLM frontend asks (Schedule, Cancel, GetRequestState)."""
