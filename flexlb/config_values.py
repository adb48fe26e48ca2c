"""Parsers of single configuration values, each raising ConfigError that names the field.

Shared by the settings (config.py) and MODEL_SERVICE_CONFIG (model_service.py), which import this and
not each other's internals.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and what is accepted."""

    def __init__(self, field_path: str, problem: str) -> None:
        super().__init__(f"{field_path}: {problem}")
        self.field_path = field_path


def _obj(path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a JSON object, got {type(value).__name__}")
    return value


def _int(path: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            value = int(value)
        else:
            raise ConfigError(path, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(path, f"must be >= {minimum}, got {value}")
    return int(value)


_TRUE = {"true", "1", "yes", "on", "enabled"}
_FALSE = {"false", "0", "no", "off", "disabled"}


def _float(path: str, value: Any, minimum: float | None = None) -> float:
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+(\.[0-9]*)?\s*", value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(path, f"expected a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(path, f"must be >= {minimum}, got {value}")
    return float(value)


def _bool(path: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(path, f"expected true or false, got {value!r}")


def _str(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a string, got {value!r}")
    return value


def _enum(path: str, value: Any, accepted: list[str]) -> str:
    text = _str(path, value).strip().upper()
    if text not in accepted:
        raise ConfigError(path, f"unknown value {value!r}; accepted: {', '.join(accepted)}")
    return text


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


def _bind_host(path: str, value: Any) -> str:
    """An IP literal or a host name to bind; "" is kept (it means 'the default')."""
    text = _str(path, value).strip()
    if not text:
        return ""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    # an all-digit last label is a mistyped IPv4 address (999.1.1.1), never a name
    if not _HOST_NAME.fullmatch(bare) or bare.rstrip(".").rsplit(".", 1)[-1].isdigit():
        raise ConfigError(path, f"expected an IP address or a host name (no port), got {value!r}")
    return bare


def _host_port(path: str, text: Any) -> tuple[str, int]:
    """'host:port' ([v6]:port too) with a port in 1-65535."""
    s = _str(path, text).strip()
    host, sep, port = s.rpartition(":")
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise ConfigError(path, f"expected 'ip:port', got {s!r}")
    return host.strip("[]"), int(port)
