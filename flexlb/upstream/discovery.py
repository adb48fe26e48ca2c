"""The dynamic membership sources: DNS names re-resolved on an interval, a workers file watched for changes.

Each source looks on its own interval and, when its set differs from the last one it gave, puts
`(source, workers)` on a queue the composition root applies (flexlb/membership.py). A failed look (a DNS
time-out or SERVFAIL, an unreadable or invalid file) keeps the last good set: it is logged, once per new reason,
and shown in GET /admin/workers. An NXDOMAIN or empty answer is a failure too unless `dns_allow_empty`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.inet
import dns.name
import dns.rdatatype
import dns.resolver

from flexlb.balancer.workers import WorkerAddr
from flexlb.config_values import ConfigError, _host_port
from flexlb.membership import FILE_PREFIX, DiscoveryConfig, DnsTarget, parse_workers_file

log = logging.getLogger("flexlb.discovery")

Update = tuple[str, list[WorkerAddr]]


class LookFailed(Exception):
    """One look at a source gave no usable set (the message says why); the last good set stays."""


@dataclass
class SourceStatus:
    """What the last looks at one source gave (GET /admin/workers)."""

    kind: str
    looks: int = 0
    failures: int = 0
    last_ok_s: float = 0.0  # time.time() of the last good look (0: none yet)
    error: str = ""  # why the last look failed ("" when it did not)
    workers: list[WorkerAddr] | None = None  # the last good set (None: none yet)

    def view(self) -> dict[str, object]:
        """JSON-ready."""
        return {"kind": self.kind, "looks": self.looks, "failures": self.failures, "last_ok_s": self.last_ok_s,
                "error": self.error, "workers": None if self.workers is None else len(self.workers)}


def make_resolver(config: DiscoveryConfig) -> dns.asyncresolver.Resolver:
    """An async resolver asking `dns_server` (host:port), else the system's nameservers; no cache."""
    if config.dns_server:
        host, port = _host_port("--dns-server", config.dns_server)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    else:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration as exc:
            # every look fails and says why (logged, GET /admin/workers) instead of the gateway not starting
            log.error("no system nameserver to resolve --workers-dns names (%s); give --dns-server IP:PORT", exc)
            resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.timeout = config.dns_timeout_s
    resolver.lifetime = config.dns_timeout_s
    return resolver


class DnsSource:
    """The workers one DNS name stands for: its A and AAAA records, or its SRV records' targets."""

    def __init__(self, target: DnsTarget, resolver: dns.asyncresolver.Resolver, allow_empty: bool,
                 search: bool) -> None:
        self.target = target
        self.name = target.source
        self._resolver = resolver
        self._allow_empty = allow_empty
        self._search = search  # the system resolver's search list applies to relative names (like getaddrinfo)

    async def look(self) -> list[WorkerAddr]:
        """Resolve now; raises LookFailed when the answer cannot be trusted."""
        t = self.target
        try:
            if t.srv:
                answer = await self._query(t.name, "SRV")
                found = await self._srv_workers(answer)
            else:
                found = [t.worker(ip, t.port) for ip in await self._addresses(t.name)]
        except dns.resolver.NXDOMAIN:
            found = []
            empty = "NXDOMAIN"
        except dns.exception.DNSException as exc:
            raise LookFailed(f"{type(exc).__name__}: {exc}") from None
        else:
            empty = "no records"
        if not found and not self._allow_empty:
            raise LookFailed(f"{empty} for {t.name} (kept the last good set; --workers-dns-allow-empty takes an "
                             "empty answer as no workers)")
        return sorted(set(found), key=lambda a: (a.ip, a.grpc_port))

    async def _query(self, name: str | dns.name.Name, rdtype: str) -> dns.resolver.Answer:
        return await self._resolver.resolve(name, rdtype, raise_on_no_answer=False, search=self._search)

    async def _addresses(self, name: str | dns.name.Name, glue: dict[dns.name.Name, list[str]] | None = None
                         ) -> list[str]:
        """IPv4 and IPv6 addresses of `name` (from the SRV answer's additional section when it carried them)."""
        if glue is not None and isinstance(name, dns.name.Name) and name in glue:
            return glue[name]
        out: list[str] = []
        for rdtype in ("A", "AAAA"):
            answer = await self._query(name, rdtype)  # NXDOMAIN on A raises: AAAA would say the same
            if answer.rrset is not None:
                out.extend(rr.address for rr in answer.rrset)
        return out

    async def _srv_workers(self, answer: dns.resolver.Answer) -> list[WorkerAddr]:
        if answer.rrset is None:
            return []
        glue: dict[dns.name.Name, list[str]] = {}
        for rrset in answer.response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                glue.setdefault(rrset.name, []).extend(rr.address for rr in rrset)
        out: list[WorkerAddr] = []
        # every target is a worker: priority and weight are for clients that pick one server, not a balancer
        for rr in answer.rrset:
            if rr.target == dns.name.root:
                continue  # "." means: no service here
            w_port = self.target.worker("0.0.0.0", rr.port)
            if not (0 < w_port.grpc_port < 65536 and 0 <= w_port.http_port < 65536):
                continue
            out.extend(self.target.worker(ip, rr.port) for ip in await self._addresses(rr.target, glue))
        return out


class FileSource:
    """The workers file (flexlb.membership.parse_workers_file), re-read whenever its stat changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"{FILE_PREFIX}{path}"
        self._seen: tuple[int, int, int, int] | None = None

    def changed(self) -> bool:
        """Whether the file's modification time, size or inode moved since the last read (or it went away)."""
        try:
            st = os.stat(self.path)  # follows symlinks: a Kubernetes ConfigMap swaps a symlink
        except OSError:
            return self._seen != (0, 0, 0, 0)
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev) != self._seen

    def look(self) -> list[WorkerAddr]:
        """Read and parse the file now; raises LookFailed (unreadable, or a bad line)."""
        try:
            st = os.stat(self.path)
            self._seen = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            if isinstance(exc, OSError) and not os.path.exists(self.path):
                self._seen = (0, 0, 0, 0)
            raise LookFailed(f"cannot read the workers file: {exc}") from None
        try:
            return parse_workers_file(self.path, text)
        except ConfigError as exc:
            raise LookFailed(str(exc)) from None


@dataclass
class _Watched:
    source: DnsSource | FileSource
    interval_s: float
    status: SourceStatus
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Discovery:
    """Runs the configured sources; their new sets arrive on `updates` as (source, workers)."""

    def __init__(self, config: DiscoveryConfig) -> None:
        self.config = config
        self.updates: asyncio.Queue[Update] = asyncio.Queue()
        self._watched: dict[str, _Watched] = {}
        if config.dns:
            resolver = make_resolver(config)
            for t in config.dns:
                src = DnsSource(t, resolver, config.dns_allow_empty, search=not config.dns_server)
                self._watched[src.name] = _Watched(src, config.dns_interval_s, SourceStatus("dns"))
        if config.workers_file:
            fsrc = FileSource(config.workers_file)
            self._watched[fsrc.name] = _Watched(fsrc, config.file_interval_s, SourceStatus("file"))

    def sources(self) -> list[str]:
        """The names of the configured sources."""
        return list(self._watched)

    def status(self) -> dict[str, dict[str, object]]:
        """Every source's last looks, by source name."""
        return {name: w.status.view() for name, w in self._watched.items()}

    async def look_all(self) -> list[Update]:
        """One look at every source now (at startup, before serving); the sets that were found."""
        looks = await asyncio.gather(*(self._look(w, force=True) for w in self._watched.values()))
        return [u for u in looks if u is not None]

    def start(self) -> None:
        """Look at every source on its interval from now on."""
        for w in self._watched.values():
            if w.task is None:
                w.task = asyncio.get_running_loop().create_task(self._watch(w), name=f"discovery {w.source.name}")

    async def stop(self) -> None:
        """Stop looking."""
        tasks = [w.task for w in self._watched.values() if w.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for w in self._watched.values():
            w.task = None

    async def _watch(self, w: _Watched) -> None:
        while True:
            await asyncio.sleep(w.interval_s)
            update = await self._look(w)
            if update is not None:
                self.updates.put_nowait(update)

    async def _look(self, w: _Watched, force: bool = False) -> Update | None:
        """Look once; the new set when it differs from the last good one (always at `force`), else None."""
        src, st = w.source, w.status
        if isinstance(src, FileSource) and not force and not src.changed():
            return None
        st.looks += 1
        try:
            found = await src.look() if isinstance(src, DnsSource) else src.look()
        except LookFailed as exc:
            st.failures += 1
            if str(exc) != st.error:  # once per new reason, not once per interval
                log.warning("%s: %s; %s", src.name, exc, "keeping the last good set of "
                            f"{len(st.workers)} workers" if st.workers is not None else "no workers from it yet")
            st.error = str(exc)
            return None
        except Exception:  # a bug in one look must not end the watch
            st.failures += 1
            log.exception("%s: looking failed", src.name)
            return None
        if st.error:
            log.info("%s: answering again (%d workers)", src.name, len(found))
        st.error = ""
        st.last_ok_s = time.time()
        if found == st.workers and not force:
            return None
        st.workers = found
        return src.name, found


def is_address(host: str) -> bool:
    """Whether `host` is an IPv4 or IPv6 address (a nameserver must be one)."""
    return dns.inet.is_address(host)
