"""The configuration file of `flexlb serve --config FILE` (TOML, YAML or JSON): what the environment holds, in one file.

The file becomes the two inputs load_settings already takes, so load_settings stays the one assembler:

- `[master]`, `[model_service]`, `[consistency]` are WHALE_MASTER_CONFIG, MODEL_SERVICE_CONFIG and
  WHALE_SYNC_LB_CONSISTENCY_CONFIG with the same keys; `[domain_address]` are the `DOMAIN_ADDRESS:<name>`
  variables; `server.role_id` / `server.admin_token` are HIPPO_ROLE / FLEXLB_ADMIN_TOKEN: an environment mapping;
- the rest of `[server]` (and `[server.limits]`) are the `flexlb serve` flags: a CliOverrides;
- `[logging]` is --log-level, --log-format and --access-log-sample.

Precedence: flags > environment > file. WHALE_MASTER_CONFIG and WHALE_SYNC_LB_CONSISTENCY_CONFIG merge with their
section key by key (a key set in the variable wins; nested objects are replaced whole); MODEL_SERVICE_CONFIG, the
worker list, replaces `[model_service]` whole, as the worker flags replace both. Every value of the file is
validated here first, so an error names the file and the key (`flexlb.toml: master.batchSize: ...`); unknown keys
are errors with a did-you-mean.
"""

from __future__ import annotations

import json
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from flexlb.config import (
    CONSISTENCY_ENV,
    EDGE_LIMIT_FLAGS,
    MASTER_ENV,
    MASTER_FIELDS,
    SERVER_FLAGS,
    CliOverrides,
    ConfigError,
    Settings,
    load_settings,
    parse_consistency,
    parse_master,
)
from flexlb.config_values import _bool, _float, _int, _str
from flexlb.flexlb_env import suggest
from flexlb.model_service import ENDPOINT_KEYS, MODEL_SERVICE_ENV, parse_model_service

ADMIN_TOKEN_ENV = "FLEXLB_ADMIN_TOKEN"
ROLE_ENV = "HIPPO_ROLE"
DOMAIN_ADDRESS_PREFIX = "DOMAIN_ADDRESS:"

# section -> the environment variables it stands for (the first one is written when none is set)
JSON_SECTIONS: dict[str, tuple[str, ...]] = {
    "master": MASTER_ENV,
    "model_service": (MODEL_SERVICE_ENV,),
    "consistency": CONSISTENCY_ENV,
}
TOP_KEYS = ("server", "logging", "master", "model_service", "consistency", "domain_address")
LOGGING_KEYS = ("level", "format", "access_log_sample")
# [server] keys that are environment variables (so the environment wins over them)
SERVER_ENV_KEYS = {"role_id": ROLE_ENV, "admin_token": ADMIN_TOKEN_ENV}
# CliOverrides fields the file sets elsewhere: deploy and strategies in [master], workers in [model_service]
_NOT_IN_SERVER = frozenset({"deploy", "strategy", "decode_strategy", "prefill", "decode", "fused", "limits",
                            *SERVER_ENV_KEYS})
_MODEL_SERVICE_KEYS = ("service_id", "role_endpoints", *ENDPOINT_KEYS)
_CONSISTENCY_KEYS = ("needConsistency", "masterElectType", "zookeeperConfig")
_ZOOKEEPER_KEYS = ("zkHost", "zkTimeoutMs")
_MASTER_KEYS = tuple(k for f in MASTER_FIELDS for k in f.keys)
_SERVER_FLAG = {sf.cli: sf for sf in SERVER_FLAGS}

SUFFIXES = (".toml", ".yaml", ".yml", ".json")


@dataclass(frozen=True)
class LoggingOptions:
    """[logging]: the log flags' values as text (None: not in the file)."""

    level: str | None = None
    format: str | None = None
    access_log_sample: str | None = None


@dataclass(frozen=True)
class ConfigFile:
    """A parsed and validated configuration file, as the inputs of load_settings."""

    path: str
    env: Mapping[str, str]  # the variables the file stands for (JSON sections serialized)
    sections: Mapping[str, Mapping[str, Any]]  # the JSON sections as given (for the key-by-key merge)
    cli: CliOverrides  # [server] and [server.limits] as flags
    logging: LoggingOptions = field(default_factory=LoggingOptions)


# ---------------------------------------------------------------- reading


def _read(path: Path) -> Any:
    name = str(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(name, f"unknown file type {suffix or '(no suffix)'!r}; accepted: {', '.join(SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(name, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(name, "not UTF-8 text") from None
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(name, f"not valid TOML ({exc})") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(name, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a dependency; kept for trimmed installs
        raise ConfigError(name, "YAML needs PyYAML (pip install pyyaml); or write the file as TOML") from None
    try:
        return yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(name, f"not valid YAML ({problem}{where})") from None


def _known_only(where: str, raw: Mapping[str, Any], known: tuple[str, ...], list_them: bool = True) -> None:
    """Unknown keys are errors: a typo in a file would otherwise be a setting silently not applied."""
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(f"{where}", f"keys must be strings, got {key!r}")
        if key in known:
            continue
        near = suggest(key, known)
        hint = f"did you mean {near}?" if near else (f"accepted: {', '.join(known)}" if list_them else
                                                    "see the configuration reference in README.md")
        raise ConfigError(f"{where}.{key}" if where else key, f"unknown key; {hint}")


def _scalar_parser(annotation: Any) -> Callable[[str, Any], Any]:
    """The parser of a CliOverrides field from its type: `int | None` -> an integer, ..."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    base = args[0]
    if typing.get_origin(base) is tuple:
        return lambda path, v: tuple(_str(f"{path}[{i}]", x) for i, x in enumerate(_list(path, v)))
    if base is bool:
        return _bool
    if base is int:
        return _int
    if base is float:
        return _float
    return _str


def _table(path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise ConfigError(path, f"expected a table of keys, got {'an' if kind[0] in 'aeiou' else 'a'} {kind}")
    return value


def _list(path: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(path, f"expected a list, got {value!r}")
    return value


def _server_keys() -> dict[str, Callable[[str, Any], Any]]:
    hints = typing.get_type_hints(CliOverrides)
    return {f.name: _scalar_parser(hints[f.name]) for f in fields(CliOverrides) if f.name not in _NOT_IN_SERVER}


def _server_value(path: str, key: str, raw: Any, parse: Callable[[str, Any], Any]) -> Any:
    sf = _SERVER_FLAG.get(key)
    if sf is None:
        return parse(path, raw)
    value = parse(path, raw)
    # the flag's own rule (minimum, maximum, accepted words), named by the file's key
    parsed = sf.kind.parse(path, value, sf.minimum)
    if sf.maximum is not None and parsed > sf.maximum:
        raise ConfigError(path, f"must be <= {sf.maximum:g} (0 picks a free port), got {parsed}")
    return value


def _server(name: str, raw: Mapping[str, Any]) -> tuple[CliOverrides, dict[str, str]]:
    where = f"{name}: server"
    keys = _server_keys()
    _known_only(where, raw, (*keys, *SERVER_ENV_KEYS, "limits"))
    given: dict[str, Any] = {}
    env: dict[str, str] = {}
    for key, value in raw.items():
        path = f"{where}.{key}"
        if key == "limits":
            continue
        if key in SERVER_ENV_KEYS:
            env[SERVER_ENV_KEYS[key]] = _str(path, value)
            continue
        given[key] = _server_value(path, key, value, keys[key])
    limits: list[tuple[str, float]] = []
    if "limits" in raw:
        lim = _table(f"{where}.limits", raw["limits"])
        _known_only(f"{where}.limits", lim, tuple(EDGE_LIMIT_FLAGS))
        for key, value in lim.items():
            row = EDGE_LIMIT_FLAGS[key]
            limits.append((key, row.kind.parse(f"{where}.limits.{key}", value, row.minimum)))
    return CliOverrides(**given, limits=tuple(limits)), env


def _logging(name: str, raw: Mapping[str, Any]) -> LoggingOptions:
    where = f"{name}: logging"
    _known_only(where, raw, LOGGING_KEYS)
    out: dict[str, str] = {}
    for key, value in raw.items():
        if key == "access_log_sample" and isinstance(value, int | float) and not isinstance(value, bool):
            value = repr(value)
        out[key] = _str(f"{where}.{key}", value)
    # the same parsers as the flags, so a bad value is caught by `flexlb config check`
    from flexlb.logs import parse_format, parse_level, parse_sample

    if "level" in out:
        parse_level(out["level"], f"{where}.level")
    if "format" in out:
        parse_format(out["format"], f"{where}.format")
    if "access_log_sample" in out:
        parse_sample(out["access_log_sample"], f"{where}.access_log_sample")
    return LoggingOptions(**out)


def _sections(name: str, doc: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The JSON-variable sections, each validated on its own so errors name the file."""
    out: dict[str, Mapping[str, Any]] = {}
    for section in JSON_SECTIONS:
        if section not in doc:
            continue
        where = f"{name}: {section}"
        raw = _table(where, doc[section])
        if section == "master":
            _known_only(where, raw, _MASTER_KEYS, list_them=False)
            parse_master(raw, where)
        elif section == "model_service":
            _known_only(where, raw, _MODEL_SERVICE_KEYS)
            parse_model_service(raw, _domain_env(name, doc), where)
        else:
            _known_only(where, raw, _CONSISTENCY_KEYS)
            if "zookeeperConfig" in raw:
                _known_only(f"{where}.zookeeperConfig", _table(f"{where}.zookeeperConfig", raw["zookeeperConfig"]),
                            _ZOOKEEPER_KEYS)
            parse_consistency(raw, where)
        out[section] = raw
    return out


def _domain_env(name: str, doc: Mapping[str, Any]) -> dict[str, str]:
    raw = _table(f"{name}: domain_address", doc.get("domain_address", {}))
    env: dict[str, str] = {}
    for key, value in raw.items():
        path = f"{name}: domain_address.{key}"
        hosts = ",".join(_str(f"{path}[{i}]", h) for i, h in enumerate(value)) if isinstance(value, list) \
            else _str(path, value)
        env[DOMAIN_ADDRESS_PREFIX + str(key)] = hosts
    return env


def load_config_file(path: str | Path) -> ConfigFile:
    """Read and validate a configuration file, or raise ConfigError naming the file and the key."""
    p = Path(path)
    name = str(path)
    doc = _read(p)
    if doc is None:
        doc = {}
    doc = _table(name, doc)
    for key in doc:
        if key not in TOP_KEYS:
            near = suggest(str(key), TOP_KEYS)
            hint = f"did you mean {near}?" if near else f"accepted: {', '.join(TOP_KEYS)}"
            raise ConfigError(f"{name}: {key}", f"unknown section; {hint}")
    cli, env = _server(name, _table(f"{name}: server", doc.get("server", {})))
    logging = _logging(name, _table(f"{name}: logging", doc.get("logging", {})))
    sections = _sections(name, doc)
    env.update(_domain_env(name, doc))
    for section, raw in sections.items():
        env[JSON_SECTIONS[section][0]] = json.dumps(raw)
    return ConfigFile(name, env, sections, cli, logging)


# ---------------------------------------------------------------- precedence


def _merged_json(section: str, file_raw: Mapping[str, Any], text: str) -> str | None:
    """The file's section with the variable's keys on top, or None when the variable is not a JSON object
    (load_settings then reports it as it always does)."""
    try:
        given = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(given, dict):
        return None
    merged = dict(file_raw)
    if section == "master":
        # a key of the variable replaces the file's value under any alias of the same field
        for f in MASTER_FIELDS:
            if any(k in given for k in f.keys):
                for k in f.keys:
                    merged.pop(k, None)
    merged.update(given)
    return json.dumps(merged)


def effective_env(file: ConfigFile, env: Mapping[str, str]) -> dict[str, str]:
    """The environment load_settings reads: the file's variables, the real ones on top (JSON key by key)."""
    out = {**file.env, **env}
    for section, raw in file.sections.items():
        if section == "model_service":
            continue  # the worker list is one setting: the variable replaces it whole (as the worker flags do)
        names = JSON_SECTIONS[section]
        present = next((n for n in names if (env.get(n) or "").strip()), None)
        if present is None:
            continue
        merged = _merged_json(section, raw, env[present])
        if merged is not None:
            out[present] = merged
            for other in names:
                if other != present and other not in env:
                    out.pop(other, None)
    return out


def effective_cli(file: ConfigFile, cli: CliOverrides) -> CliOverrides:
    """The flags, the file's [server] values where a flag is not given."""
    updates: dict[str, Any] = {}
    for f in fields(CliOverrides):
        given, from_file = getattr(cli, f.name), getattr(file.cli, f.name)
        if f.name == "limits":
            flagged = {name for name, _ in cli.limits}
            updates["limits"] = tuple(p for p in file.cli.limits if p[0] not in flagged) + cli.limits
        elif given is None or given == ():
            updates[f.name] = from_file
    return replace(cli, **updates)


def _renamer(file: ConfigFile, env: Mapping[str, str]) -> Callable[[str], str]:
    """Messages name a variable that came from the file by the file's section instead."""
    swaps: list[tuple[str, str]] = []
    for section, names in JSON_SECTIONS.items():
        if not any((env.get(n) or "").strip() for n in names):
            # from the file; or given nowhere, when either place would do
            where = f"{file.path}: {section}" if section in file.sections else f"{names[0]} (or {file.path}: {section})"
            swaps += [(n, where) for n in names]
    for key, var in SERVER_ENV_KEYS.items():
        if var in file.env and var not in env:
            swaps.append((var, f"{file.path}: server.{key}"))

    def rename(text: str) -> str:
        for var, section in swaps:
            if text == var or text.startswith((var + ".", var + ":")):
                return section + text[len(var):]
            # HIPPO_ROLE is named inside "--role-id / HIPPO_ROLE"
            text = text.replace(f"/ {var}", f"/ {section}")
        return text

    return rename


def settings_with_file(file: ConfigFile | None, env: Mapping[str, str], cli: CliOverrides) -> Settings:
    """load_settings with the file's values under the environment's and the flags' (flags > environment > file)."""
    return load_settings(env, cli) if file is None else settings_of(file, env, cli)


def settings_of(file: ConfigFile, env: Mapping[str, str], cli: CliOverrides) -> Settings:
    """The Settings of a loaded file under `env` and `cli`; errors and warnings name the file's keys."""
    rename = _renamer(file, env)
    try:
        settings = load_settings(effective_env(file, env), effective_cli(file, cli))
    except ConfigError as exc:
        problem = str(exc)[len(exc.field_path) + 2:]
        raise ConfigError(rename(exc.field_path), problem) from None
    return replace(settings, warnings=tuple(rename(w) for w in settings.warnings))


def check_report(file: ConfigFile, settings: Settings) -> dict[str, Any]:
    """What `flexlb config check` prints: the effective settings (secrets masked), logging and the warnings."""
    from flexlb.config import masked

    logs = file.logging
    return {
        "file": file.path,
        "settings": masked(settings),
        "logging": {"level": logs.level or "INFO", "format": logs.format or "text",
                    "access_log_sample": float(logs.access_log_sample or 1)},
        "warnings": list(settings.warnings),
    }
