"""Packaging: the sdist is the whole project, and `pip install` of it works without a C compiler (pure-Python hash).

Offline and fast: the fresh virtualenv installs flexlb alone (--no-deps, --no-build-isolation) and finds its
dependencies, and setuptools, in this environment's site-packages through a .pth path line.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

from flexlb import __version__

ROOT = Path(__file__).resolve().parent.parent
# what is never part of the project: environments, caches, build output
_NOT_PROJECT = shutil.ignore_patterns(".git", ".venv", ".tools", "node_modules", "__pycache__", "*.pyc", "*.so",
                                      "*.egg-info", "build", "dist", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                                      ".hypothesis", "tmp")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a clean copy of the project, the sdist built from it)."""
    base = tmp_path_factory.mktemp("packaging")
    tree = base / "src"
    shutil.copytree(ROOT, tree, ignore=_NOT_PROJECT, symlinks=True)
    out = base / "dist"
    built = subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; "
                            f"print(build_meta.build_sdist({str(out)!r}))"], cwd=tree, capture_output=True, text=True,
                           timeout=120, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    return tree, out / built.stdout.strip().splitlines()[-1]


def test_the_sdist_holds_the_whole_project(sdist: tuple[Path, Path]) -> None:
    tree, archive = sdist
    top = f"flexlb-{__version__}/"
    with tarfile.open(archive) as tar:
        members = {m.name.removeprefix(top) for m in tar.getmembers() if m.isfile()}
        info = email.message_from_bytes(tar.extractfile(top + "PKG-INFO").read())  # type: ignore[union-attr]
    project = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    tracked = _tracked()
    if tracked is not None:  # in a checkout: what git tracks (a stray local file is not the project's)
        project &= tracked
    assert project - members == set()
    for needed in ("LICENSE", "Makefile", "Dockerfile", ".dockerignore", "MANIFEST.in", "proto/model_rpc_service.proto",
                   "tests/conftest.py", "tests/data/rtp_llm_wire.json", "deploy/flexlb.example.toml",
                   "deploy/systemd/flexlb.service", "deploy/kubernetes/gateway.yaml", "flexlb/balancer/_blockhash.c"):
        assert needed in members, needed
    assert not [m for m in members if m.endswith((".so", ".pyc"))]
    assert info["License-Expression"] == "Apache-2.0"
    assert info["License-File"] == "LICENSE"
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0, January 2004" in \
        (ROOT / "LICENSE").read_text()


def _tracked() -> set[str] | None:
    """The files git tracks, or None outside a git checkout (an unpacked sdist)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60, check=False)
    return set(out.stdout.decode().split("\0")) - {""} if out.returncode == 0 else None


def test_pip_install_without_a_c_compiler_falls_back_to_the_pure_python_hash(
        sdist: tuple[Path, Path], tmp_path: Path) -> None:
    _, archive = sdist
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    source = tmp_path / f"flexlb-{__version__}"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    # the dependencies (and setuptools, for the build) come from this environment, offline
    (site / "_flexlb_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "CC": "false", "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-v", "--no-deps",
                                "--no-build-isolation", "--no-index", str(source)], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=120, check=False)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert "the optional C extension was not built" in installed.stdout + installed.stderr
    package = site / "flexlb"
    assert (package / "cli.py").is_file()
    assert not list(package.rglob("_blockhash*.so"))
    assert (site / f"flexlb-{__version__}.dist-info" / "licenses" / "LICENSE").is_file()

    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    helped = subprocess.run([str(venv / "bin" / "flexlb"), "--help"], cwd=tmp_path, env=clean, capture_output=True,
                            text=True, timeout=60, check=False)
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout and "config" in helped.stdout
    assert "C block-key hash unavailable" in helped.stderr  # the warning at import
    probe = ("import flexlb, flexlb.balancer.prefix as p; from flexlb.balancer.prefix import rtp_block_keys as ref; "
             "t = list(range(1, 300)); print(flexlb.__file__, p.FAST_BLOCK_KEYS, p.block_keys(t, 64) == ref(t, 64))")
    ran = subprocess.run([str(python), "-c", probe], cwd=tmp_path, env=clean, capture_output=True, text=True,
                         timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    where, fast, same = ran.stdout.split()
    assert Path(where).is_relative_to(site) and fast == "False" and same == "True"
