"""The committed generated code matches proto/, and proto/ passes buf lint with justified exceptions."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
PB_DIR = ROOT / "flexlb" / "pb"
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
BUF_YAML = ROOT / "buf.yaml"


def _gen_proto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_flexlb_gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generated(directory: Path) -> dict[str, bytes]:
    names = sorted(p for p in directory.iterdir() if re.search(r"_pb2\w*\.pyi?$", p.name))
    return {p.name: p.read_bytes() for p in names}


def test_committed_code_matches_regeneration(tmp_path: Path) -> None:
    out = tmp_path / "pb"
    written = _gen_proto().generate(out)
    fresh = _generated(out)
    committed = _generated(PB_DIR)
    assert {p.name for p in written} == set(fresh)
    # two protos -> message modules, stubs and gRPC modules for each
    assert len(fresh) == 6, sorted(fresh)
    assert set(fresh) == set(committed), (
        f"generated files differ: only fresh {sorted(set(fresh) - set(committed))}, "
        f"only committed {sorted(set(committed) - set(fresh))}; run `python scripts/gen_proto.py`"
    )
    stale = [name for name in sorted(fresh) if fresh[name] != committed[name]]
    assert not stale, f"flexlb/pb is stale for {stale}; run `python scripts/gen_proto.py` and commit"
    # the imports were rewritten package-relative so flexlb.pb works as a package
    grpc_mod = fresh["model_rpc_service_pb2_grpc.py"].decode()
    assert "from . import model_rpc_service_pb2" in grpc_mod
    assert not re.search(r"^import \w+_pb2", grpc_mod, re.MULTILINE)


def _buf() -> Path:
    if not BUF.exists():
        pytest.fail(f"buf not found at {BUF.relative_to(ROOT)}; run `make tools` to install it",
                    pytrace=False)
    return BUF


def test_buf_lint_passes() -> None:
    result = subprocess.run(
        [str(_buf()), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"buf lint failed:\n{result.stdout}{result.stderr}"


def test_buf_lint_is_not_vacuous(tmp_path: Path) -> None:
    """The same config rejects a proto that breaks a rule that is not excepted."""
    shutil.copy(BUF_YAML, tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    (tmp_path / "proto" / "bad_names.proto").write_text(
        'syntax = "proto3";\n\nmessage bad_message_name {\n  int32 BadFieldName = 1;\n}\n'
    )
    result = subprocess.run(
        [str(_buf()), "lint"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "bad_names.proto" in out
    assert "model_rpc_service.proto" not in out


def _except_blocks(text: str) -> list[list[str]]:
    """Every `except:` list in a YAML file as its stripped lines (entries, comments and blank lines)."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)except:\s*$", line)
        if not m:
            continue
        indent = len(m.group(1))
        block = []
        for nxt in lines[i + 1 :]:
            stripped = nxt.strip()
            is_entry = stripped.startswith("- ") and len(nxt) - len(nxt.lstrip()) >= indent
            if stripped and not stripped.startswith("#") and not is_entry:
                break
            block.append(stripped)
        blocks.append(block)
    return blocks


def _rule(entry: str) -> str:
    return entry[2:].split("#", 1)[0].strip()


def uncommented_excepts(text: str) -> list[str]:
    """Excepted rules without a comment. A rule is covered by an inline comment or by a comment line
    directly above it or above the run of entries it belongs to (no blank line in between)."""
    bad = []
    for block in _except_blocks(text):
        covered = False
        for stripped in block:
            if stripped.startswith("#"):
                covered = True
            elif not stripped:
                covered = False
            elif not covered and "#" not in stripped:
                bad.append(_rule(stripped))
    return bad


def test_every_buf_exception_is_commented() -> None:
    text = BUF_YAML.read_text()
    blocks = _except_blocks(text)
    assert blocks, "buf.yaml has no `except:` list"
    rules = [_rule(s) for b in blocks for s in b if s.startswith("- ")]
    assert rules, "the `except:` list is empty"
    assert all(re.fullmatch(r"[A-Z_]+", r) for r in rules), rules
    assert uncommented_excepts(text) == [], "every excepted lint rule must carry a comment saying why"


def test_comment_check_catches_a_bare_rule() -> None:
    text = (
        "lint:\n  use:\n    - STANDARD\n  except:\n    # why\n    - PACKAGE_DEFINED\n    - RPC_PASCAL_CASE\n"
        "\n    - ENUM_VALUE_PREFIX\n    # reason\n\n    - ENUM_ZERO_VALUE_SUFFIX\n"
        "    - FIELD_LOWER_SNAKE_CASE  # inline reason\n"
        "breaking:\n  use:\n    - FILE\n  except:\n  - FIELD_SAME_NAME\n"
    )
    assert uncommented_excepts(text) == ["ENUM_VALUE_PREFIX", "ENUM_ZERO_VALUE_SUFFIX", "FIELD_SAME_NAME"]
    rules = [[_rule(s) for s in b if s.startswith("- ")] for b in _except_blocks(text)]
    assert rules == [
        ["PACKAGE_DEFINED", "RPC_PASCAL_CASE", "ENUM_VALUE_PREFIX", "ENUM_ZERO_VALUE_SUFFIX",
         "FIELD_LOWER_SNAKE_CASE"],
        ["FIELD_SAME_NAME"],
    ]
