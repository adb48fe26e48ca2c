"""Benchmarks write their figures into docs/*.md between their own markers, leaving the rest alone."""

from __future__ import annotations

from pathlib import Path


def update_section(path: Path, name: str, title: str, block: str, file_title: str = "# Benchmarks") -> None:
    """Replace the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` (the block carries both
    markers), or append it under `## TITLE` when the file has no such section yet."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if not (block.startswith(begin) and block.endswith(end)):
        raise ValueError(f"block must start with {begin} and end with {end}")
    text = path.read_text() if path.exists() else file_title + "\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n" + block + "\n"
    path.write_text(text)
