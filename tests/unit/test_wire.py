"""Wire format: every message round-trips; junk only ever raises RemoteProtocolError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core import wire
from meshd.core.errors import Reject, RemoteProtocolError
from meshd.core.wire import Channel, DigestEntry, MemberState

ids = st.binary(min_size=32, max_size=32)
versions = st.integers(0, wire.MAX_VERSION)
seqs = st.integers(0, wire.MAX_SEQ)
blobs = st.binary(max_size=300)
items = st.one_of(
    st.builds(wire.AnnounceItem, blobs),
    st.builds(wire.SuspectItem, ids, versions, ids),
    st.builds(wire.DeadItem, ids, versions, ids),
    st.builds(wire.RevocationItem, blobs),
)
item_lists = st.lists(items, max_size=4).map(tuple)
states = st.sampled_from(list(MemberState))
digests = st.one_of(
    st.none(),
    st.lists(st.builds(DigestEntry, ids, versions, st.sampled_from(list(MemberState)[:4])),
             max_size=20, unique_by=lambda e: e.node_id).map(tuple),
)  # fmt: skip
messages = st.one_of(
    st.builds(wire.JoinRequest, st.binary(min_size=8, max_size=8), blobs, versions, states),
    st.builds(wire.JoinReply, st.binary(min_size=8, max_size=8), blobs, versions, states),
    st.builds(wire.Ping, seqs, item_lists),
    st.builds(wire.Ack, seqs, item_lists),
    st.builds(wire.PingReq, seqs, ids, item_lists),
    st.builds(wire.Nack, seqs),
    st.builds(wire.Gossip, item_lists),
    st.builds(wire.StateCheck, st.binary(min_size=16, max_size=16)),
    st.builds(wire.MeshCheck, st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8)),
    st.builds(wire.Initiate, ids, st.booleans()),
    st.builds(wire.MeshCheckReply, st.binary(min_size=8, max_size=8), ids,
              st.binary(min_size=16, max_size=16), seqs),
    st.builds(wire.PushPullRequest, st.binary(min_size=16, max_size=16), digests),
    st.builds(wire.PushPullReply, st.binary(min_size=16, max_size=16), digests,
              st.lists(st.binary(min_size=wire.MIN_ANNOUNCEMENT, max_size=300),
                       max_size=5).map(tuple)),
)  # fmt: skip


@settings(max_examples=500)
@given(messages)
def test_every_message_round_trips_on_its_channel(msg: wire.Message) -> None:
    channel = wire.channel_of(msg)
    data = wire.encode(msg)
    assert wire.decode(data, channel) == msg
    for other in Channel:
        if other is not channel and len(data) <= wire.max_size(other):
            with pytest.raises(RemoteProtocolError) as err:
                wire.decode(data, other)
            assert err.value.reason is Reject.WRONG_CHANNEL


@settings(max_examples=500)
@given(messages, st.data())
def test_mutations_raise_only_remote_protocol_error(msg: wire.Message, data: st.DataObject) -> None:
    raw = bytearray(wire.encode(msg))
    op = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    pos = data.draw(st.integers(0, len(raw) - 1))
    if op == "flip":
        raw[pos] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        del raw[pos:]
    else:
        raw.insert(pos, data.draw(st.integers(0, 255)))
    with contextlib.suppress(RemoteProtocolError):
        wire.decode(bytes(raw), wire.channel_of(msg))


@settings(max_examples=500)
@given(st.binary(max_size=2000), st.sampled_from(list(Channel)))
def test_random_bytes_raise_only_remote_protocol_error(raw: bytes, channel: Channel) -> None:
    for candidate in (raw, wire.PREFIX + raw):
        with contextlib.suppress(RemoteProtocolError):
            wire.decode(candidate, channel)


def test_join_request_is_padded_to_fixed_size_and_short_ones_refused() -> None:
    for ann_len in (0, 100, 250, 260, 1000):
        msg = wire.JoinRequest(bytes(8), bytes(ann_len), 5, MemberState.UNKNOWN)
        assert len(wire.encode(msg)) == wire.JOIN_REQUEST_SIZE
    unpadded = wire.PREFIX + wire.enc.pack((1, bytes(8), b"x", 0, 4, b""))
    with pytest.raises(RemoteProtocolError) as err:
        wire.decode(unpadded, Channel.UNDERLAY)
    assert err.value.reason is Reject.MALFORMED


def test_mesh_check_is_padded_and_never_smaller_than_its_largest_reply() -> None:
    check = wire.encode(wire.MeshCheck(bytes(8), bytes(8)))
    assert len(check) == wire.MESH_CHECK_SIZE
    largest = wire.MeshCheckReply(b"\xff" * 8, b"\xff" * 32, b"\xff" * 16, wire.MAX_SEQ)
    assert len(wire.encode(largest)) <= len(check)
    unpadded = wire.PREFIX + wire.enc.pack((11, bytes(8), bytes(8), b""))
    with pytest.raises(RemoteProtocolError) as err:
        wire.decode(unpadded, Channel.UNDERLAY)
    assert err.value.reason is Reject.MALFORMED
    with pytest.raises(RemoteProtocolError) as err:
        wire.decode(check, Channel.OVERLAY)
    assert err.value.reason is Reject.WRONG_CHANNEL


def test_envelope_errors_have_their_reasons() -> None:
    cases = [
        (b"XX\x01\x91\x06", Reject.MALFORMED),
        (b"MD\x02\x92\x06\x01", Reject.UNSUPPORTED_VERSION),
        (b"MD\x01\x92\x63\x01", Reject.UNKNOWN_TYPE),
        (bytes(wire.MAX_OVERLAY_DATAGRAM + 1), Reject.OVERSIZE),
    ]
    got = []
    for raw, _ in cases:
        with pytest.raises(RemoteProtocolError) as err:
            wire.decode(raw, Channel.OVERLAY)
        got.append(err.value.reason)
    assert got == [r for _, r in cases]


def test_golden_encoding() -> None:
    # If this changes, it's a breaking change of the wire format: bump WIRE_VERSION.
    assert wire.encode(wire.Ping(7)).hex() == "4d4401930307" + "90"
    assert wire.encode(wire.Nack(2**32 - 1)).hex() == "4d44019206ceffffffff"
    assert wire.encode(wire.StateCheck(bytes(16))).hex() == "4d4401920ac410" + "00" * 16
    suspect = wire.Gossip((wire.SuspectItem(bytes(32), 1, b"\x01" * 32),))
    assert wire.encode(suspect).hex() == (
        "4d4401920791" + "9401c420" + "00" * 32 + "01c420" + "01" * 32
    )
