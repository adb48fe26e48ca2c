"""A client that stops reading slows only its own upstream stream; memory stays bounded; others flow."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import h2.settings

from flexlb.relay.h2.frames import grpc_message_frame
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr

CLIENT_WINDOW = 16 * 1024


class StalledClient:
    """A raw HTTP/2 client (the independent `h2` library) that never gives flow-control window back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received = 0
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, body: bytes) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: CLIENT_WINDOW})
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [
            (":method", "POST"), (":scheme", "http"), (":path", "/RpcService/GenerateStreamCall"),
            (":authority", f"127.0.0.1:{self.port}"), ("te", "trailers"), ("content-type", "application/grpc"),
        ])
        self.conn.send_data(sid, grpc_message_frame(body), end_stream=True)
        self.writer.write(self.conn.data_to_send())
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.reader is not None and self.writer is not None
        while data := await self.reader.read(65536):
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.received += len(event.data)  # deliberately never acknowledged
            self.writer.write(self.conn.data_to_send())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.close()


async def test_stalled_client_is_bounded_and_others_keep_flowing(mock_workers, gateways, channels) -> None:
    worker = await mock_workers(time_scale=0.0)  # generates as fast as it is allowed to send
    gw = await gateways([worker_addr(worker)])
    stalled = StalledClient(gw.grpc_port)
    await stalled.start(generate_input(60, max_new_tokens=2_000_000).SerializeToString())
    try:
        await wait_for(lambda: stalled.received >= CLIENT_WINDOW - 200, what="the client window to fill")
        # the worker keeps producing only until the windows between it and the client are full
        previous = -1
        for _ in range(200):
            if worker.messages_sent == previous:
                break
            previous = worker.messages_sent
            await asyncio.sleep(0.05)  # sampling interval of the plateau check, not synchronisation
        assert worker.messages_sent == previous, "the worker never stopped: nothing pushed back"
        # a message is ~60 bytes on the wire; the h2 engine holds at most its 256 KiB stream window and
        # grpc.aio (BDP probing off) its fixed HTTP/2 windows: far from the 2,000,000 messages asked for
        limit = 20_000
        assert worker.messages_sent < limit, worker.messages_sent
        assert stalled.received <= CLIENT_WINDOW
        # everyone else is unaffected
        others = await asyncio.gather(*(
            _count(stream_stub(channels(gw.grpc_port)), 61 + i) for i in range(5)
        ))
        assert others == [8] * 5
    finally:
        await stalled.close()
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="the stalled call released on disconnect")


async def _count(stub, request_id: int) -> int:  # type: ignore[no-untyped-def]
    return len([m async for m in stub(generate_input(request_id), timeout=10)])
