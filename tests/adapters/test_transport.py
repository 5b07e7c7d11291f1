"""MeshTransport on loopback. With interface "lo" standing in for the mesh interface, packets
over lo count as overlay; the same socket tells them apart from underlay packets by the arrival
interface, which is what matters."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from meshd.adapters.transport import MeshTransport, Received


def member_loopback(host: str) -> bool:
    """::1 stands in for a live member's overlay address."""
    return host == "::1"


def nobody(host: str) -> bool:
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::", 0))
        port: int = s.getsockname()[1]
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::", port))  # also free for TCP, or try again
    return port


async def wait_for(queue: asyncio.Queue[Received]) -> Received:
    return await asyncio.wait_for(queue.get(), timeout=5)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[MeshTransport, MeshTransport, asyncio.Queue[Received]]]:
    inbox: asyncio.Queue[Received] = asyncio.Queue()
    a = MeshTransport(free_port(), "lo", ["::1"], inbox.put_nowait, stream_from=member_loopback)
    b = MeshTransport(free_port(), "meshd-absent0", ["fd00::1"], lambda r: None, stream_from=nobody)
    await a.start()
    await b.start()
    try:
        yield a, b, inbox
    finally:
        await a.close()
        await b.close()


async def test_datagrams_report_source_and_arrival_interface(
    pair: tuple[MeshTransport, MeshTransport, asyncio.Queue[Received]],
) -> None:
    a, b, inbox = pair
    b.send(("::1", a.port), b"over-v6")
    got = await wait_for(inbox)
    assert (got.data, got.source, got.channel) == (b"over-v6", ("::1", b.port), "overlay")
    b.send(("127.0.0.1", a.port), b"over-v4")
    got = await wait_for(inbox)
    assert (got.data, got.source, got.channel) == (b"over-v4", ("127.0.0.1", b.port), "overlay")
    assert a.bytes_received == len(b"over-v6") + len(b"over-v4")


async def test_underlay_datagrams_are_not_overlay() -> None:
    inbox: asyncio.Queue[Received] = asyncio.Queue()
    t = MeshTransport(
        free_port(), "meshd-absent0", ["fd00::1"], inbox.put_nowait, stream_from=nobody
    )
    await t.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"join?", ("127.0.0.1", t.port))
        got = await wait_for(inbox)
        assert (got.data, got.source[0], got.channel) == (b"join?", "127.0.0.1", "underlay")
    finally:
        await t.close()


async def test_stream_message_is_delivered_only_to_the_overlay_address(
    pair: tuple[MeshTransport, MeshTransport, asyncio.Queue[Received]],
) -> None:
    a, b, inbox = pair
    big = bytes(range(256)) * 4000  # larger than any datagram
    b.send_stream(("127.0.0.1", a.port), b"not through the tunnel")
    await asyncio.gather(*b._tasks)  # the refused message was written and the socket closed
    b.send_stream(("::1", a.port), big)
    got = await wait_for(inbox)
    assert (got.data, got.channel) == (big, "stream")  # the first message to arrive is the second
    assert inbox.empty()


async def test_a_failing_handler_does_not_stop_the_socket() -> None:
    seen: list[bytes] = []
    both = asyncio.Event()

    def handler(r: Received) -> None:
        seen.append(r.data)
        if len(seen) == 2:
            both.set()
        if r.data == b"boom":
            raise RuntimeError("handler bug")

    t = MeshTransport(free_port(), "lo", ["::1"], handler, stream_from=nobody)
    await t.start()
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.sendto(b"boom", ("::1", t.port))
            s.sendto(b"after", ("::1", t.port))
        await asyncio.wait_for(both.wait(), timeout=5)
        assert seen == [b"boom", b"after"]
    finally:
        await t.close()


async def test_read_pending_handles_what_waits_in_the_socket_without_a_loop_turn(
    pair: tuple[MeshTransport, MeshTransport, asyncio.Queue[Received]],
) -> None:
    a, b, inbox = pair
    for i in range(100):  # more than one reader batch
        b.send(("::1", a.port), b"ack %d" % i)
    # Loopback delivers synchronously: the datagrams are queued in a's socket, and no loop turn
    # has run a's reader callback yet.
    assert inbox.empty()
    a.read_pending()
    assert inbox.qsize() == 100


async def open_stream(
    port: int, host: str = "::1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def closed_unread(reader: asyncio.StreamReader) -> bool:
    """True when the listener closed the connection without waiting for anything from us."""
    try:
        return await asyncio.wait_for(reader.read(1), timeout=2) == b""
    except ConnectionResetError:
        return True


async def test_stream_from_a_non_member_is_closed_before_a_byte_is_read() -> None:
    # Issue #22, finding 3: any local process could connect to the overlay address and have up
    # to 16 MiB read and decoded. Now the peer address is checked first.
    inbox: asyncio.Queue[Received] = asyncio.Queue()
    asked: list[str] = []

    def member(host: str) -> bool:
        asked.append(host)
        return False

    t = MeshTransport(free_port(), "lo", ["::1"], inbox.put_nowait, stream_from=member)
    await t.start()
    try:
        reader, writer = await open_stream(t.port)  # sends nothing: nothing may be awaited
        assert await closed_unread(reader)
        writer.close()
        assert (asked, t.streams_refused, t.bytes_received) == (["::1"], {"not_member": 1}, 0)
        assert inbox.empty()
    finally:
        await t.close()


async def test_stream_length_above_the_cap_is_refused_before_the_body() -> None:
    inbox: asyncio.Queue[Received] = asyncio.Queue()
    t = MeshTransport(
        free_port(), "lo", ["::1"], inbox.put_nowait, stream_from=member_loopback, max_message=1000
    )
    await t.start()
    try:
        reader, writer = await open_stream(t.port)
        writer.write(struct.pack("!I", 1001))  # and no body: it must not be waited for
        assert await closed_unread(reader)
        writer.close()
        reader, writer = await open_stream(t.port)
        writer.write(struct.pack("!I", 1000) + b"x" * 1000)
        got = await wait_for(inbox)
        writer.close()
        assert (got.data, got.source[0], got.channel) == (b"x" * 1000, "::1", "stream")
        assert (t.streams_refused, t.bytes_received) == ({"oversize": 1}, 1004)
    finally:
        await t.close()


async def test_concurrent_streams_are_capped() -> None:
    inbox: asyncio.Queue[Received] = asyncio.Queue()
    t = MeshTransport(
        free_port(), "lo", ["::1"], inbox.put_nowait, stream_from=member_loopback, max_streams=2
    )
    await t.start()
    try:
        held = [await open_stream(t.port) for _ in range(2)]  # being read: they send slowly
        for _, writer in held:
            writer.write(struct.pack("!I", 3))
            await writer.drain()
        await asyncio.sleep(0.05)  # both accepted and waiting for their bodies
        reader, writer = await open_stream(t.port)
        assert await closed_unread(reader)  # the third is refused at once
        writer.close()
        assert t.streams_refused == {"too_many": 1}
        for _, writer in held:
            writer.write(b"abc")
        assert [(await wait_for(inbox)).data for _ in held] == [b"abc", b"abc"]
        for _, writer in held:
            writer.close()
        reader, writer = await open_stream(t.port)  # a slot is free again
        writer.write(struct.pack("!I", 2) + b"ok")
        assert (await wait_for(inbox)).data == b"ok"
        writer.close()
        assert t.streams_refused == {"too_many": 1}
    finally:
        await t.close()
