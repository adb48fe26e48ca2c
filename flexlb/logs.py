"""Log setup (text or JSON lines) and the access log: one line per client call on the `flexlb.access` logger.

Operators route by logger name: `flexlb.access` (calls), `flexlb.call` (failovers, passive ejections),
`flexlb.health` (active checks), `flexlb.consistency` (election), `flexlb.admin`, `flexlb` (lifecycle).
In JSON every line is one object with `time`, `level`, `logger`, `message`, plus the record's fields
(the access log's `method`, `worker`, `code`, ... are top-level keys).
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from pythonjsonlogger.json import JsonFormatter

from flexlb.config import ConfigError

if TYPE_CHECKING:
    from flexlb.call.record import CallRecord

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
ACCESS_LOGGER = "flexlb.access"

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# JSON: the standard attributes kept, under short names
_JSON_FIELDS = ("asctime", "levelname", "name", "message")
_JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger"}

_access = logging.getLogger(ACCESS_LOGGER)


def parse_level(text: str, flag: str = "--log-level") -> int:
    """A level name (any case) as a logging level; ConfigError naming the flag and the accepted values."""
    name = text.strip().upper()
    if name not in LOG_LEVELS:
        raise ConfigError(flag, f"unknown value {text!r}; accepted: {', '.join(LOG_LEVELS)}")
    return int(logging.getLevelName(name))


def parse_format(text: str, flag: str = "--log-format") -> str:
    """'text' or 'json'; ConfigError otherwise."""
    name = text.strip().lower()
    if name not in LOG_FORMATS:
        raise ConfigError(flag, f"unknown value {text!r}; accepted: {', '.join(LOG_FORMATS)}")
    return name


def parse_sample(text: str, flag: str = "--access-log-sample") -> float:
    """A share of OK calls to log, 0..1; ConfigError otherwise."""
    try:
        rate = float(text)
    except ValueError:
        raise ConfigError(flag, f"{text!r} is not a number; accepted: 0 to 1") from None
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(flag, f"{text!r} is out of range; accepted: 0 to 1")
    return rate


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of a log format name."""
    if fmt == "json":
        return JsonFormatter(list(_JSON_FIELDS), rename_fields=_JSON_RENAMES, json_ensure_ascii=False)
    return logging.Formatter(_TEXT_FORMAT)


def setup_logging(level: int | str = logging.INFO, fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Send every logger to one stream handler (stderr) in `fmt`, replacing the root's handlers."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class AccessLog:
    """Writes one `flexlb.access` INFO line per client call. Failed calls are always written; OK calls are
    sampled at `sample_rate` (1: all, 0: none)."""

    def __init__(self, sample_rate: float = 1.0, rng: Callable[[], float] = random.random,
                 logger: logging.Logger = _access) -> None:
        self.sample_rate = sample_rate
        self._rng = rng
        self._log = logger

    def __call__(self, record: CallRecord) -> None:
        """Log `record` (Dispatcher.access_log)."""
        if not self._log.isEnabledFor(logging.INFO):
            return
        if record.code == "OK" and (self.sample_rate <= 0.0 or
                                    (self.sample_rate < 1.0 and self._rng() >= self.sample_rate)):
            return
        fields = access_fields(record)
        self._log.info(access_line(fields), extra=fields)


def access_fields(r: CallRecord) -> dict[str, Any]:
    """The access log's fields of one call (JSON keys; `extra` of the log record)."""
    return {
        "method": r.method,
        "code": r.code,
        "worker": r.worker,
        "role": r.role,
        "decode_worker": r.decode_worker,
        "ttft_ms": None if r.ttft_s is None else round(r.ttft_s * 1000.0, 3),
        "duration_ms": round(r.duration_s * 1000.0, 3),
        "reason": r.reason,
        "strategy": r.strategy,
        "attempts": r.attempts,
        "request_id": r.request_id,
        "prompt_tokens": r.prompt_tokens,
        "cached_tokens": r.cached_tokens,
        "messages": r.messages,
        "client": r.client,
    }


def access_line(f: dict[str, Any]) -> str:
    """The text form: method, status, worker or pair, TTFT, duration, reason, then the rest as key=value."""
    where = f["worker"] or "-"
    if f["decode_worker"]:
        where = f"{where}+{f['decode_worker']}"
    ttft = "-" if f["ttft_ms"] is None else f"{f['ttft_ms']:.1f}ms"
    return (f"{f['method']} {f['code']} {where} ttft={ttft} duration={f['duration_ms']:.1f}ms "
            f"reason={f['reason'] or '-'} attempts={f['attempts']} request_id={f['request_id']} "
            f"prompt_tokens={f['prompt_tokens']} cached_tokens={f['cached_tokens']} messages={f['messages']}")
