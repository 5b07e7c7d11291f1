"""One stream message costs the loop a bounded amount of work (issue #22, stream bomb).

Before: the decoder bounded sizes only, so a 16 MiB message of small nested arrays built a
million tuples (~0.6 s; deeper nesting ~10 s), and a reply of a million empty announcements was
decoded and refused one by one (seconds)."""

from __future__ import annotations

import os

import msgpack
import pytest

from meshd.core import encoding as enc
from meshd.core import wire
from meshd.core.errors import Reject, RemoteProtocolError
from meshd.core.membership import MessageRejected
from meshd.core.wire import Channel
from tests.unit.nodes import NOW, Lab


def _reply(anns: list[bytes]) -> bytes:
    return wire.PREFIX + enc.pack((9, bytes(16), None, tuple(anns), ()))


def test_a_message_of_many_nested_arrays_is_refused_at_the_fifth_array() -> None:
    inner = msgpack.packb([0] * 15)
    n = (16 * 2**20 - 100) // len(inner)
    bomb = b"\xdd" + (1 << 14).to_bytes(4, "big") + inner * (1 << 14)
    data = wire.PREFIX + b"\x95\x09" + enc.pack(bytes(16)) + b"\xc0" + bomb + b"\x90"
    with pytest.raises(RemoteProtocolError) as err:
        wire.decode(data, Channel.STREAM)
    assert (err.value.reason, err.value.detail) == (Reject.MALFORMED, "message: more than 4 arrays")
    assert n > wire.MAX_STREAM_ITEMS  # the same bomb at full size is refused by the length cap
    big = wire.PREFIX + b"\x95\x09" + enc.pack(bytes(16)) + b"\xc0" + b"\xdd" + n.to_bytes(
        4, "big"
    ) + inner * n + b"\x90"  # fmt: skip
    with pytest.raises(RemoteProtocolError):
        wire.decode(big, Channel.STREAM)


def test_stream_arrays_digests_and_announcements_are_bounded() -> None:
    with pytest.raises(RemoteProtocolError):
        wire.decode(_reply([bytes(100)] * (wire.MAX_STREAM_ITEMS + 1)), Channel.STREAM)
    with pytest.raises(RemoteProtocolError) as err:
        wire.decode(_reply([b"\0"]), Channel.STREAM)
    assert err.value.detail == "announcement of 1 bytes"
    digest = bytes(wire.DIGEST_RECORD_SIZE) * (wire.MAX_STREAM_ITEMS + 1)
    with pytest.raises(RemoteProtocolError):
        wire.decode(wire.PREFIX + enc.pack((9, bytes(16), digest, (), ())), Channel.STREAM)


def test_a_reply_of_refused_announcements_is_dropped_after_32() -> None:
    lab = Lab(3)
    a, *_ = lab.converged(3)
    src = lab.source_of(1, Channel.OVERLAY)
    junk = [os.urandom(200) for _ in range(1000)]
    a.receive(_reply(junk), src, NOW, Channel.STREAM)
    events = a.events()
    assert len(events) == 33 and all(isinstance(e, MessageRejected) for e in events)
    assert events[-1] == MessageRejected(Reject.MALFORMED, src)
    assert events[-1].detail == "push-pull: 968 announcements left unread after 32 refused"


def test_a_reply_of_many_versions_of_one_node_applies_one() -> None:
    lab = Lab(3)
    a, b, _ = lab.converged(3)
    anns = [b.update_self(NOW + i / 1000) for i in range(1, 40)]
    src = lab.source_of(1, Channel.OVERLAY)
    a.receive(_reply([x.raw for x in anns]), src, NOW + 1, Channel.STREAM)
    events = a.events()
    # The first is news; each later one of the same node is refused, and the 32nd ends it.
    assert a.member(b.node_id).ann == anns[0]  # type: ignore[union-attr]
    assert len(events) == 33 and all(isinstance(e, MessageRejected) for e in events)
    assert events[-1].detail == "push-pull: 6 announcements left unread after 32 refused"
