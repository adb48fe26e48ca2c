"""The life of one client call, whichever engine carries it: parse once, admission, routing, attempts, finish."""
