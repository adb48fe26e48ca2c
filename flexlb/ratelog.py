"""Logging that a flood cannot turn into a flood of log lines."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """At most one line per key per interval; the next line says how many were held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # key -> (when last logged, suppressed since)

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log `message` unless `key` was logged within the interval; True when it was logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return False
        suppressed = last[1] if last is not None else 0
        if len(self._last) > 10_000:
            self._last.clear()  # keys come from fixed sets; this only bounds a bug
        self._last[key] = (now, 0)
        if suppressed:
            message += " (%d more like this in the last %.0f s)"
            args = (*args, suppressed, self._interval_s)
        self._logger.log(level, message, *args)
        return True
