"""A small authoritative DNS server on loopback (dnslib), UDP and TCP on one free port, whose records a test
changes while it runs: what the DNS membership source is tested against (no patched resolver)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSLabel
from dnslib.server import BaseResolver, DNSLogger, DNSServer

UDP_MAX_BYTES = 512  # a longer UDP answer is truncated (TC, question kept): the client asks again over TCP


def _name(name: str) -> str:
    return name if name.endswith(".") else name + "."


class Zone(BaseResolver):
    """Records by name: A/AAAA addresses and SRV (priority, weight, port, target); thread-safe edits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._a: dict[str, list[str]] = {}
        self._aaaa: dict[str, list[str]] = {}
        self._srv: dict[str, list[tuple[int, str]]] = {}
        self.fail = False  # answer SERVFAIL to everything (a broken nameserver)
        self.glue = True  # SRV answers carry their targets' addresses in the additional section
        self.queries = 0
        self.tcp_queries = 0  # of them, over TCP (a truncated UDP answer is asked again over TCP)

    def set_a(self, name: str, ips: list[str]) -> None:
        """The A records of `name` (an empty list: the name exists with no A record)."""
        with self._lock:
            self._a[_name(name)] = list(ips)

    def set_aaaa(self, name: str, ips: list[str]) -> None:
        """The AAAA records of `name`."""
        with self._lock:
            self._aaaa[_name(name)] = list(ips)

    def set_srv(self, name: str, targets: list[tuple[int, str]]) -> None:
        """The SRV records of `name`: (port, target host name) each."""
        with self._lock:
            self._srv[_name(name)] = [(port, _name(t)) for port, t in targets]

    def delete(self, name: str) -> None:
        """`name` no longer exists (NXDOMAIN)."""
        with self._lock:
            for table in (self._a, self._aaaa, self._srv):
                table.pop(_name(name), None)

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        with self._lock:
            self.queries += 1
            self.tcp_queries += getattr(handler, "protocol", "") == "tcp"
            if self.fail:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if not any(qname in t for t in (self._a, self._aaaa, self._srv)):
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            for rr in self._records(qname, qtype):
                reply.add_answer(rr)
            if qtype == "SRV" and self.glue:
                for _, target in self._srv.get(qname, []):
                    for rr in (*self._records(target, "A"), *self._records(target, "AAAA")):
                        reply.add_ar(rr)
        if getattr(handler, "protocol", "") == "udp" and len(reply.pack()) > UDP_MAX_BYTES:
            reply = request.reply()
            reply.header.tc = 1
        return reply

    def _records(self, qname: str, qtype: str) -> Iterator[RR]:
        label = DNSLabel(qname)
        if qtype == "A":
            for ip in self._a.get(qname, []):
                yield RR(label, QTYPE.A, rdata=A(ip), ttl=1)
        elif qtype == "AAAA":
            for ip in self._aaaa.get(qname, []):
                yield RR(label, QTYPE.AAAA, rdata=AAAA(ip), ttl=1)
        elif qtype == "SRV":
            for port, target in self._srv.get(qname, []):
                yield RR(label, QTYPE.SRV, rdata=SRV(0, 10, port, target), ttl=1)


class LoopbackDns:
    """The zone served on 127.0.0.1, UDP and TCP on the same free port, in two threads."""

    def __init__(self) -> None:
        self.zone = Zone()
        quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False, logf=lambda _s: None)
        last: OSError | None = None
        for _ in range(20):  # a port free for UDP may be taken for TCP: try another
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
            servers: list[DNSServer] = []
            try:
                for tcp in (False, True):
                    servers.append(DNSServer(self.zone, address="127.0.0.1", port=port, tcp=tcp, logger=quiet))
            except OSError as exc:
                last = exc
                for s in servers:
                    s.server.server_close()
                continue
            self.port = port
            self._servers = servers
            break
        else:
            raise OSError(f"no free port for UDP and TCP: {last}")
        self._threads = [threading.Thread(target=s.server.serve_forever, kwargs={"poll_interval": 0.02},
                                          name=f"loopback dns {'tcp' if i else 'udp'}", daemon=True)
                         for i, s in enumerate(self._servers)]
        for t in self._threads:
            t.start()

    @property
    def address(self) -> str:
        """`ip:port` for --dns-server."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop both servers and close their sockets."""
        for s in self._servers:
            s.server.shutdown()
            s.server.server_close()
        for t in self._threads:
            t.join(5)
