"""Generate flexlb/pb/ from proto/ with grpcio-tools.

Usage: python scripts/gen_proto.py [OUT_DIR]   (default: flexlb/pb)
The generated modules import each other absolutely (`import model_rpc_service_pb2`);
we rewrite those imports to package-relative ones so `flexlb.pb` works as a package.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
_IMPORT_RE = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every file in proto/ into out_dir and return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for path in sorted(out_dir.glob("*_pb2*.py*")):
        text = path.read_text()
        fixed = _IMPORT_RE.sub(lambda m: f"from . import {m.group(1)}{m.group(2) or ''}", text)
        if fixed != text:
            path.write_text(fixed)
        written.append(path)
    init = out_dir / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated protobuf and gRPC modules (scripts/gen_proto.py); do not edit."""\n')
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "flexlb" / "pb"
    for p in generate(target):
        print(p.relative_to(target.parent) if target.parent in p.parents else p)
