"""A standalone ZooKeeper (Debian's package) on a free loopback port with its own data dir: for tests and demo-ha."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ZK_JAR = Path("/usr/share/java/zookeeper.jar")


def free_port() -> int:
    """A port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def four_letter(port: int, word: str, timeout_s: float = 1.0) -> str:
    """A ZooKeeper four-letter command ('' if it does not answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(word.encode())
            return s.recv(4096).decode(errors="replace")
    except OSError:
        return ""


class ZooKeeper:
    """One standalone server; start() waits for `imok`."""

    def __init__(self) -> None:
        if not ZK_JAR.exists() or shutil.which("java") is None:
            raise RuntimeError("ZooKeeper is not installed: `make zookeeper` installs Debian's package")
        self.dir = Path(tempfile.mkdtemp(prefix="flexlb-zk-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        (self.dir / "data").mkdir()
        (self.dir / "zoo.cfg").write_text(
            f"tickTime=500\nminSessionTimeout=1000\nmaxSessionTimeout=10000\ndataDir={self.dir / 'data'}\n"
            f"clientPort={self.port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr,stat,mntr\n"
        )

    @property
    def hosts(self) -> str:
        """The connection string."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and wait until it answers."""
        self.proc = subprocess.Popen(
            ["java", "-Xmx256m", "-cp", f"{ZK_JAR}:{self.dir}", "org.apache.zookeeper.server.ZooKeeperServerMain",
             str(self.dir / "zoo.cfg")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
        )
        deadline = time.monotonic() + timeout_s
        while four_letter(self.port, "ruok") != "imok":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ZooKeeper did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (kept data: a restart resumes with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def destroy(self) -> None:
        """Stop and remove the data."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
