"""Long-lived channels to workers and ready-made bytes-in/bytes-out callables for the relay."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import grpc

from flexlb import wire
from flexlb.balancer.workers import WorkerAddr
from flexlb.tls import PLAINTEXT, Dialer


@dataclass
class _Upstream:
    channels: list[grpc.aio.Channel]
    generate_stream: list[grpc.aio.UnaryStreamMultiCallable]
    batch_generate: list[grpc.aio.UnaryUnaryMultiCallable]
    turn: itertools.cycle
    unary: dict[str, grpc.aio.UnaryUnaryMultiCallable] = field(default_factory=dict)  # by method path


class UpstreamPool:
    """One (or a few) channels per worker, created lazily on the event loop and reused for every call."""

    def __init__(self, max_message_bytes: int, channels_per_worker: int = 1, dialer: Dialer = PLAINTEXT) -> None:
        self._max_message_bytes = max_message_bytes
        self._dialer = dialer  # plaintext or TLS towards workers
        self._channels_per_worker = max(1, channels_per_worker)
        self._by_key: dict[str, _Upstream] = {}

    def _options(self, index: int) -> list[tuple[str, int | str]]:
        return [
            ("grpc.max_receive_message_length", self._max_message_bytes),
            ("grpc.max_send_message_length", self._max_message_bytes),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # fail fast instead of queueing calls on a dead worker; failover happens above
            ("grpc.enable_retries", 0),
            # a fixed receive window: with BDP probing it grows to megabytes per stream, and a client
            # that stops reading would let its worker run that far ahead into the gateway's memory
            ("grpc.http2.bdp_probe", 0),
            # distinct args give each channel of a worker its own TCP connection
            ("grpc.channel_id", index),
            ("grpc.use_local_subchannel_pool", 1),
        ]

    def _get(self, addr: WorkerAddr) -> _Upstream:
        up = self._by_key.get(addr.key)
        if up is None:
            channels = [
                self._dialer.channel(addr.key, self._options(i)) for i in range(self._channels_per_worker)
            ]
            up = _Upstream(
                channels=channels,
                # no serializers: request and response messages pass through as bytes
                generate_stream=[c.unary_stream(wire.GENERATE_STREAM_CALL) for c in channels],
                batch_generate=[c.unary_unary(wire.BATCH_GENERATE_CALL) for c in channels],
                turn=itertools.cycle(range(len(channels))),
            )
            self._by_key[addr.key] = up
        return up

    def generate_stream(self, addr: WorkerAddr) -> grpc.aio.UnaryStreamMultiCallable:
        """Bytes callable for GenerateStreamCall on the worker (channels taken in turn)."""
        up = self._get(addr)
        return up.generate_stream[next(up.turn)]

    def batch_generate(self, addr: WorkerAddr) -> grpc.aio.UnaryUnaryMultiCallable:
        """Bytes callable for BatchGenerateCall on the worker."""
        up = self._get(addr)
        return up.batch_generate[next(up.turn)]

    async def unary(self, addr: WorkerAddr, path: str, request: bytes, timeout_s: float | None) -> bytes:
        """One unary call to the worker, bytes in and out (Cancel, GetWorkerStatus, ...); raises AioRpcError."""
        up = self._get(addr)
        call = up.unary.get(path)
        if call is None:
            call = up.unary[path] = up.channels[0].unary_unary(path)
        reply: bytes = await call(request, timeout=timeout_s)
        return reply

    async def drop(self, key: str) -> None:
        """Close the channels of a worker that left the cluster (a later call there would open new ones)."""
        up = self._by_key.pop(key, None)
        for ch in up.channels if up is not None else ():
            await ch.close()

    async def close(self) -> None:
        """Close every channel."""
        for up in self._by_key.values():
            for ch in up.channels:
                await ch.close()
        self._by_key.clear()
