"""Generate the README's configuration tables from the field tables of flexlb/config.py.

Usage: python scripts/config_table.py [--check] [--readme PATH]

Each table sits between `<!-- config-table:NAME:begin -->` and `<!-- config-table:NAME:end -->` in the README;
whatever is between the markers is replaced. Tables: `master`, `schedule` and `head` (WHALE_MASTER_CONFIG /
FLEXLB_CONFIG: the rows of MASTER_FIELDS by section) and `limits` (the client-facing edge's limits, from
EDGE_LIMITS). With --check nothing is written: the exit code is 1 (and a diff is printed) when the README differs
from what would be generated.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from flexlb.config import (
    ACTED_ON,
    EDGE_LIMITS,
    GATEWAY,
    HEAD,
    MASTER_FIELDS,
    SCHEDULE,
    LimitRow,
    MasterConfig,
    MasterField,
    attr_value,
)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _cell(text: str) -> str:
    """Free text in a table cell: a '|' would end the cell."""
    return re.sub(r"(?<!\\)\|", r"\\|", text)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _type(f: MasterField) -> str:
    if f.kind.choices:
        return " \\| ".join(f"`{c}`" for c in f.kind.choices)
    if f.minimum is not None and f.maximum is not None:
        return f"{f.kind.name} ≥ {f.minimum:g}, ≤ {f.maximum:g}"
    if f.minimum is not None:
        return f"{f.kind.name} ≥ {f.minimum:g}"
    return f.kind.name


def master_table(section: str = GATEWAY) -> str:
    """WHALE_MASTER_CONFIG / FLEXLB_CONFIG: one row per field of the section, with its environment variable(s)."""
    defaults = MasterConfig()
    rows = []
    for f in MASTER_FIELDS:
        if f.section != section:
            continue
        key = f"`{f.key}`" + (" (also " + ", ".join(f"`{a}`" for a in f.aliases) + ")" if f.aliases else "")
        env = ", ".join(f"`{v}`" for v in f.env_names)
        default = f.default_doc or f.kind.show(attr_value(defaults, f.attr))
        status = f.status if f.status == ACTED_ON else f"not acted on yet: {f.status}"
        rows.append([key, env, _type(f), f.unit or "—", _cell(default), _cell(f.doc), _cell(status)])
    return _table(["field", "variable", "type", "unit", "default", "what it does", "status"], rows)


def _flag(row: LimitRow, earlier: Sequence[LimitRow]) -> str:
    if row.flag:
        return f"`{row.flag}`"
    if row.attr and any(e.flag and (e.of, e.attr) == (row.of, row.attr) for e in earlier):
        return "same"
    return "—"


def limits_table() -> str:
    """The client-facing edge's limits: flag, default, what a client gets, the anchors' defaults."""
    rows = [
        [_cell(r.what), _flag(r, EDGE_LIMITS[:i]), _cell(r.default_text()), _cell(r.hit), _cell(r.anchor)]
        for i, r in enumerate(EDGE_LIMITS)
    ]
    return _table(["limit", "flag", "default", "when it is hit", "anchor default"], rows)


TABLES: dict[str, Callable[[], str]] = {
    "master": master_table,
    "schedule": lambda: master_table(SCHEDULE),
    "head": lambda: master_table(HEAD),
    "limits": limits_table,
}


def render(readme: str) -> str:
    """The README with every table between its markers regenerated; ValueError when a marker is missing."""
    for name, make in TABLES.items():
        begin, end = f"<!-- config-table:{name}:begin -->", f"<!-- config-table:{name}:end -->"
        if readme.count(begin) != 1 or readme.count(end) != 1 or readme.index(begin) > readme.index(end):
            raise ValueError(f"expected one {begin} ... {end} pair")
        head, rest = readme.split(begin)
        _, tail = rest.split(end)
        readme = f"{head}{begin}\n{make()}\n{end}{tail}"
    return readme


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when the README differs; write nothing")
    parser.add_argument("--readme", type=Path, default=README, help=f"default: {README}")
    args = parser.parse_args(argv)
    current = args.readme.read_text(encoding="utf-8")
    try:
        wanted = render(current)
    except ValueError as exc:
        print(f"{args.readme}: {exc}", file=sys.stderr)
        return 2
    if wanted == current:
        return 0
    if args.check:
        diff = difflib.unified_diff(current.splitlines(), wanted.splitlines(), "README (now)", "generated", lineterm="")
        print("\n".join(diff), file=sys.stderr)
        print(f"{args.readme}: configuration tables differ; run python scripts/config_table.py", file=sys.stderr)
        return 1
    args.readme.write_text(wanted, encoding="utf-8")
    print(f"{args.readme}: configuration tables updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
