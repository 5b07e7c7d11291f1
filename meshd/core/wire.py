"""The membership wire format: one versioned envelope, one frozen dataclass per message.

Envelope: ``b"MD" || wire_version (1 byte) || msgpack([type, field...])``. The two magic bytes
let a receiver drop stray traffic (a WireGuard packet sent to the wrong port, a port scan)
before msgpack sees it; the version byte lets a later format coexist during a rolling upgrade.
The msgpack part is canonical (meshd.core.encoding): re-encoding must give the same bytes.

Every message is allowed on a fixed set of channels (`Channel`):

* ``UNDERLAY``: UDP datagrams to a node's meshd port on its underlay address, *outside* the
  tunnel. Only `JoinRequest` / `JoinReply` travel here, because nothing authenticates the
  sender's address: only signed content is believed, and replies never exceed requests
  (anti-amplification, as in RFC 9000 section 8.1).
* ``OVERLAY``: UDP datagrams to a member's overlay address, inside WireGuard, which
  authenticates the source address. Probes and piggybacked gossip.
* ``STREAM``: one message framed on a reliable stream inside the tunnel (push-pull); may be
  larger than a datagram.

`decode` raises only `RemoteProtocolError`, whatever the input.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from meshd.core import encoding as enc
from meshd.core.cert import MAX_REVOCATION_SIZE
from meshd.core.errors import Reject, RemoteProtocolError
from meshd.core.identity import KEY_LEN

MAGIC = b"MD"
WIRE_VERSION = 1
PREFIX = MAGIC + bytes([WIRE_VERSION])

# Largest underlay datagram accepted: 1500-byte Ethernet MTU minus IPv6 (40) and UDP (8).
MAX_UNDERLAY_DATAGRAM = 1452
# Largest overlay datagram: WireGuard's default MTU (1420) minus inner IPv6 (40) and UDP (8).
MAX_OVERLAY_DATAGRAM = 1372
# A join request is padded to this size so that the reply (the seed's announcement, at most
# 1280 bytes, plus ~40 bytes of fields) always fits under it: reply <= request, no amplification.
JOIN_REQUEST_SIZE = 1400
# Push-pull on a stream: the whole state of a 10,000-node mesh (~7 MB of announcements).
MAX_STREAM_MESSAGE = 32 * 1024 * 1024
MAX_STREAM_ITEMS = 1 << 14
"""Most elements of one array in a stream message, and most digest records: announcements of a
16,384-node mesh. Bounds the work one message costs (issue #22: with 2^20, one hostile message
of a million empty announcements took the loop ~0.1 s to decode and seconds to refuse)."""
MAX_STREAM_ARRAYS = 4
"""Arrays in one stream message, nesting included: the message, its announcements, its
revocations (and one spare). Decoding stops at the next one (`encoding.unpack`)."""
MIN_ANNOUNCEMENT = 64
"""No signed announcement is shorter (a 64-byte signature alone): shorter ones in a stream are
refused while decoding, before any work per announcement."""
NONCE_LEN = 8
MESH_TAG_LEN = 8
# A mesh check is padded to this size so that its reply (nonce, node id, state hash, a count:
# ~70 bytes) is never larger: like the join, an answer to a stranger never amplifies.
MESH_CHECK_SIZE = 96
STATE_HASH_LEN = 16
MAX_SEQ = 2**32 - 1
MAX_VERSION = 2**64 - 1
MAX_ITEMS = 64


class Channel(enum.StrEnum):
    """Where a message travels; the adapter picks the socket from it."""

    UNDERLAY = "underlay"
    """UDP on the underlay meshd socket (join only)."""
    OVERLAY = "overlay"
    """UDP on the overlay meshd socket, inside the tunnel."""
    STREAM = "stream"
    """One length-framed message on a stream (TCP) inside the tunnel."""


class MemberState(enum.IntEnum):
    """A member's state as one node sees it; travels in digests and join replies."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3
    UNKNOWN = 4
    """Only in join messages: the sender has no record of the node."""


# --- piggybacked items -----------------------------------------------------------------------


class ItemKind(enum.IntEnum):
    ANNOUNCE = 0
    SUSPECT = 1
    DEAD = 2
    REVOKE = 3


@dataclass(frozen=True, slots=True)
class AnnounceItem:
    """A signed announcement being relayed: alive, refutation (a higher version) or leave."""

    announcement: bytes
    """Raw signed announcement (meshd.core.announce); verified by the receiver."""


@dataclass(frozen=True, slots=True)
class SuspectItem:
    """SWIM suspect claim (Das et al. 2002, section 4.2); unsigned, so only believed from
    a member's tunnel address."""

    node_id: bytes
    """Identity key of the suspected node."""
    version: int
    """The suspected node's announcement version (SWIM incarnation) the claim is about."""
    sender: bytes
    """Identity key of the node that suspects it (Lifeguard counts distinct senders)."""


@dataclass(frozen=True, slots=True)
class DeadItem:
    """SWIM confirm (dead) claim; unsigned, believed only from a member's tunnel address."""

    node_id: bytes
    """Identity key of the node declared dead."""
    version: int
    """Announcement version the declaration is about; a higher version refutes it."""
    sender: bytes
    """Identity key of the node whose suspicion timer expired."""


@dataclass(frozen=True, slots=True)
class RevocationItem:
    """A CA-signed revocation record being relayed."""

    revocation: bytes
    """Raw signed revocation (meshd.core.cert); verified by the receiver."""


Item = AnnounceItem | SuspectItem | DeadItem | RevocationItem


_ANNOUNCE, _SUSPECT, _DEAD, _REVOKE = (
    int(k) for k in (ItemKind.ANNOUNCE, ItemKind.SUSPECT, ItemKind.DEAD, ItemKind.REVOKE)
)  # plain ints: an enum's `.value` is a slow descriptor on a path every datagram takes


def item_fields(item: Item) -> tuple[Any, ...]:
    if isinstance(item, AnnounceItem):
        return (_ANNOUNCE, item.announcement)
    if isinstance(item, SuspectItem):
        return (_SUSPECT, item.node_id, item.version, item.sender)
    if isinstance(item, DeadItem):
        return (_DEAD, item.node_id, item.version, item.sender)
    return (_REVOKE, item.revocation)


def item_size(item: Item) -> int:
    """Encoded size of an item inside a message's item array."""
    return len(enc.pack(item_fields(item)))


def _node_id(value: Any, what: str) -> bytes:
    return enc.expect_bytes(value, what, KEY_LEN)


def _decode_item(value: Any) -> Item:
    t = enc.expect_tuple(value, "item")
    if not t:
        raise RemoteProtocolError(Reject.MALFORMED, "item: empty")
    kind = enc.expect_int(t[0], "item kind", 0, 255)
    if kind == ItemKind.ANNOUNCE:
        enc.expect_tuple(t, "announce item", 2)
        return AnnounceItem(enc.expect_bytes(t[1], "announcement"))
    if kind in (ItemKind.SUSPECT, ItemKind.DEAD):
        enc.expect_tuple(t, "claim item", 4)
        node = _node_id(t[1], "claim node")
        version = enc.expect_int(t[2], "claim version")
        sender = _node_id(t[3], "claim sender")
        cls = SuspectItem if kind == ItemKind.SUSPECT else DeadItem
        return cls(node, version, sender)
    if kind == ItemKind.REVOKE:
        enc.expect_tuple(t, "revocation item", 2)
        return RevocationItem(enc.expect_bytes(t[1], "revocation"))
    raise RemoteProtocolError(Reject.UNKNOWN_TYPE, f"item kind {kind}")


def _items(value: Any, max_items: int = MAX_ITEMS) -> tuple[Item, ...]:
    t = enc.expect_tuple(value, "items")
    if len(t) > max_items:
        raise RemoteProtocolError(Reject.MALFORMED, f"more than {max_items} items")
    return tuple(_decode_item(v) for v in t)


# --- digests ---------------------------------------------------------------------------------


class DigestEntry(NamedTuple):
    """One line of a push-pull digest: what the sender knows about one node."""

    node_id: bytes
    version: int
    state: MemberState


_DIGEST_RECORD = struct.Struct(">32sQB")
DIGEST_RECORD_SIZE = _DIGEST_RECORD.size  # 41 bytes: fixed records keep 10k entries cheap


def pack_digest(entries: tuple[DigestEntry, ...]) -> bytes:
    return b"".join(_DIGEST_RECORD.pack(e.node_id, e.version, e.state) for e in entries)


def unpack_digest(blob: bytes) -> tuple[DigestEntry, ...]:
    if len(blob) % DIGEST_RECORD_SIZE:
        raise RemoteProtocolError(Reject.MALFORMED, "digest: not a whole number of records")
    out: list[DigestEntry] = []
    seen: set[bytes] = set()
    for node_id, version, state in _DIGEST_RECORD.iter_unpack(blob):
        if state > MemberState.LEFT:
            raise RemoteProtocolError(Reject.MALFORMED, f"digest: state {state}")
        if node_id in seen:
            raise RemoteProtocolError(Reject.MALFORMED, "digest: node listed twice")
        seen.add(node_id)
        out.append(DigestEntry(node_id, version, MemberState(state)))
    return tuple(out)


# --- messages --------------------------------------------------------------------------------


class MessageType(enum.IntEnum):
    JOIN_REQUEST = 1
    JOIN_REPLY = 2
    PING = 3
    ACK = 4
    PING_REQ = 5
    NACK = 6
    GOSSIP = 7
    PUSH_PULL_REQUEST = 8
    PUSH_PULL_REPLY = 9
    STATE_CHECK = 10
    MESH_CHECK = 11
    MESH_CHECK_REPLY = 12
    INITIATE = 13


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """Underlay: "here is who I am, who are you?". Padded to `JOIN_REQUEST_SIZE`."""

    TYPE: ClassVar[MessageType] = MessageType.JOIN_REQUEST
    CHANNELS: ClassVar[frozenset[Channel]] = frozenset({Channel.UNDERLAY})

    nonce: bytes
    """8 random bytes the reply must echo: a reply is only believed for a request we sent."""
    announcement: bytes
    """The joiner's raw signed announcement (with its certificate)."""
    target_version: int
    """Version the joiner knows of the receiver (0 if unknown); with `target_state` it tells a
    node the joiner declared dead (partition healing) that it must refute."""
    target_state: MemberState
    """The joiner's view of the receiver; UNKNOWN for a seed it never met."""

    def fields(self) -> tuple[Any, ...]:
        return (self.nonce, self.announcement, self.target_version, int(self.target_state))


@dataclass(frozen=True, slots=True)
class JoinReply:
    """Underlay: the seed's answer; never larger than the request it answers."""

    TYPE: ClassVar[MessageType] = MessageType.JOIN_REPLY
    CHANNELS: ClassVar[frozenset[Channel]] = frozenset({Channel.UNDERLAY})

    nonce: bytes
    """The request's nonce."""
    announcement: bytes
    """The seed's own raw signed announcement."""
    requester_version: int
    """Version of the joiner the seed holds after handling the request."""
    requester_state: MemberState
    """State of the joiner at the seed; DEAD or SUSPECT at the joiner's own version means the
    joiner must refute (sign a higher version) and ask again."""

    def fields(self) -> tuple[Any, ...]:
        return (self.nonce, self.announcement, self.requester_version, int(self.requester_state))


@dataclass(frozen=True, slots=True)
class MeshCheck:
    """Underlay: "which mesh are you in?", sent to a seed address or an old contact that is
    not a live member (merging, meshd.core.lookout). Small, so that looking across costs a
    node one short datagram per check; a full join follows only when the answer shows another
    mesh. Padded to `MESH_CHECK_SIZE`."""

    TYPE: ClassVar[MessageType] = MessageType.MESH_CHECK
    CHANNELS: ClassVar[frozenset[Channel]] = frozenset({Channel.UNDERLAY})

    nonce: bytes
    """8 random bytes the reply must echo."""
    mesh_tag: bytes
    """8 bytes derived from the mesh name (`mesh_tag`): a node of another mesh stays silent."""

    def fields(self) -> tuple[Any, ...]:
        return (self.nonce, self.mesh_tag)


@dataclass(frozen=True, slots=True)
class MeshCheckReply:
    """Underlay: who answers at that address and what it sees. Unsigned: it only decides
    whether the asker sends a (signed) join request to the address it asked, nothing else."""

    TYPE: ClassVar[MessageType] = MessageType.MESH_CHECK_REPLY
    CHANNELS: ClassVar[frozenset[Channel]] = frozenset({Channel.UNDERLAY})

    nonce: bytes
    """The check's nonce."""
    node_id: bytes
    """Identity key of the answering node."""
    state_hash: bytes
    """Its state hash (`MeshNode.state_hash`)."""
    members: int
    """How many live members it knows (shown when the meshes differ)."""

    def fields(self) -> tuple[Any, ...]:
        return (self.nonce, self.node_id, self.state_hash, self.members)


@dataclass(frozen=True, slots=True)
class Initiate:
    """Overlay: "have `subject` start a WireGuard handshake towards me", for a degraded pair
    (meshd.core.pairrepair): the side behind a NAT cannot be reached first and must initiate.
    The requester sends it to a member both reach with `forward` set and the other node as
    `subject`; that member sends it on to the other node with `forward` clear and the
    requester, as WireGuard authenticated it, as `subject`."""

    TYPE: ClassVar[MessageType] = MessageType.INITIATE
    CHANNELS: ClassVar[frozenset[Channel]] = frozenset({Channel.OVERLAY})

    subject: bytes
    """Identity key: the node to ask (forward) or the node to initiate towards (not forward)."""
    forward: bool
    """True from the requester to the relay; False from the relay to the node that acts."""

    def fields(self) -> tuple[Any, ...]:
        return (self.subject, self.forward)


@dataclass(frozen=True, slots=True)
class Ping:
    """SWIM direct probe (section 3.1). No target ID: the overlay address is derived from the
    identity key and WireGuard authenticates it, so it cannot reach the wrong node."""

    TYPE: ClassVar[MessageType] = MessageType.PING
    CHANNELS: ClassVar[frozenset[Channel]] = frozenset({Channel.OVERLAY})

    seq: int
    """Probe sequence number, echoed in the ack."""
    items: tuple[Item, ...] = ()
    """Piggybacked gossip (SWIM section 4.1)."""

    def fields(self) -> tuple[Any, ...]:
        return (self.seq, tuple(item_fields(i) for i in self.items))


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a ping, or relayed by the intermediary of a ping-req."""

    TYPE: ClassVar[MessageType] = MessageType.ACK
    CHANNELS: ClassVar[frozenset[Channel]] = frozenset({Channel.OVERLAY})

    seq: int
    """Sequence number of the ping (or ping-req) answered."""
    items: tuple[Item, ...] = ()
    """Piggybacked gossip."""

    def fields(self) -> tuple[Any, ...]:
        return (self.seq, tuple(item_fields(i) for i in self.items))


@dataclass(frozen=True, slots=True)
class PingReq:
    """SWIM indirect probe request (section 3.1): "ping `target` for me"."""

    TYPE: ClassVar[MessageType] = MessageType.PING_REQ
    CHANNELS: ClassVar[frozenset[Channel]] = frozenset({Channel.OVERLAY})

    seq: int
    """Requester's probe sequence number; the relayed ack and the nack carry it."""
    target: bytes
    """Identity key of the node to probe; the intermediary uses its own record's address."""
    items: tuple[Item, ...] = ()
    """Piggybacked gossip."""

    def fields(self) -> tuple[Any, ...]:
        return (self.seq, self.target, tuple(item_fields(i) for i in self.items))


@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard (Dadgar et al. 2018, section IV-A): the intermediary got no ack from the target
    in time. Receiving nacks shows the requester its own network works (local health)."""

    TYPE: ClassVar[MessageType] = MessageType.NACK
    CHANNELS: ClassVar[frozenset[Channel]] = frozenset({Channel.OVERLAY})

    seq: int
    """Requester's probe sequence number."""

    def fields(self) -> tuple[Any, ...]:
        return (self.seq,)


@dataclass(frozen=True, slots=True)
class Gossip:
    """Items alone: eager forwarding of fresh news and the periodic gossip round."""

    TYPE: ClassVar[MessageType] = MessageType.GOSSIP
    CHANNELS: ClassVar[frozenset[Channel]] = frozenset({Channel.OVERLAY})

    items: tuple[Item, ...]
    """Gossip items, newest news first."""

    def fields(self) -> tuple[Any, ...]:
        return (tuple(item_fields(i) for i in self.items),)


@dataclass(frozen=True, slots=True)
class StateCheck:
    """The periodic anti-entropy check, as one datagram: the receiver compares the hash with
    its own and starts a full push-pull on a STREAM only when they differ. A converged pair
    exchanges one small datagram instead of opening a TCP connection (about ten packets)."""

    TYPE: ClassVar[MessageType] = MessageType.STATE_CHECK
    CHANNELS: ClassVar[frozenset[Channel]] = frozenset({Channel.OVERLAY})

    state_hash: bytes
    """16-byte order-independent hash of the sender's live (node, version) set."""

    def fields(self) -> tuple[Any, ...]:
        return (self.state_hash,)


@dataclass(frozen=True, slots=True)
class PushPullRequest:
    """Anti-entropy (SWIM section 4.3 / memberlist push-pull), on a STREAM. With `digest` None
    it only compares state hashes: an idle, converged mesh exchanges a few dozen bytes."""

    TYPE: ClassVar[MessageType] = MessageType.PUSH_PULL_REQUEST
    CHANNELS: ClassVar[frozenset[Channel]] = frozenset({Channel.STREAM})

    state_hash: bytes
    """16-byte order-independent hash of the sender's live (node, version) set."""
    digest: tuple[DigestEntry, ...] | None
    """Every node the sender knows (live and tombstones) with version and state, or None."""
    revocations: tuple[bytes, ...] = ()
    """With a digest: every revocation record the sender holds (they are few and must reach
    nodes that were away while one was gossiped)."""

    def fields(self) -> tuple[Any, ...]:
        digest = None if self.digest is None else pack_digest(self.digest)
        return (self.state_hash, digest, self.revocations)


@dataclass(frozen=True, slots=True)
class PushPullReply:
    """Answer on the STREAM: the announcements the peer lacks according to its digest, and our
    digest when we lack something of theirs (they answer once more, without a digest)."""

    TYPE: ClassVar[MessageType] = MessageType.PUSH_PULL_REPLY
    CHANNELS: ClassVar[frozenset[Channel]] = frozenset({Channel.STREAM})

    state_hash: bytes
    """Sender's state hash."""
    digest: tuple[DigestEntry, ...] | None
    """Sender's digest if it wants announcements back, else None (ends the exchange)."""
    announcements: tuple[bytes, ...]
    """Raw signed announcements newer than, or missing from, the peer's digest."""
    revocations: tuple[bytes, ...] = ()
    """Every revocation record the sender holds, when answering a full request."""

    def fields(self) -> tuple[Any, ...]:
        digest = None if self.digest is None else pack_digest(self.digest)
        return (self.state_hash, digest, self.announcements, self.revocations)


Message = (
    JoinRequest
    | JoinReply
    | Ping
    | Ack
    | PingReq
    | Nack
    | Gossip
    | PushPullRequest
    | PushPullReply
    | StateCheck
    | MeshCheck
    | MeshCheckReply
    | Initiate
)


def _state(value: Any, what: str) -> MemberState:
    return MemberState(enc.expect_int(value, what, 0, MemberState.UNKNOWN))


def _digest_field(value: Any) -> tuple[DigestEntry, ...] | None:
    if value is None:
        return None
    blob = enc.expect_bytes(value, "digest", max_len=MAX_STREAM_ITEMS * DIGEST_RECORD_SIZE)
    return unpack_digest(blob)


def _from_fields(kind: int, f: tuple[Any, ...]) -> Message:
    def n(count: int) -> tuple[Any, ...]:
        return enc.expect_tuple(f, f"{MessageType(kind).name} fields", count)

    if kind == MessageType.JOIN_REQUEST:
        n(5)
        padding = enc.expect_bytes(f[4], "padding", max_len=JOIN_REQUEST_SIZE)
        if padding.count(0) != len(padding):
            raise RemoteProtocolError(Reject.MALFORMED, "join request padding is not zeros")
        return JoinRequest(
            enc.expect_bytes(f[0], "nonce", NONCE_LEN),
            enc.expect_bytes(f[1], "announcement"),
            enc.expect_int(f[2], "target version"),
            _state(f[3], "target state"),
        )
    if kind == MessageType.JOIN_REPLY:
        n(4)
        return JoinReply(
            enc.expect_bytes(f[0], "nonce", NONCE_LEN),
            enc.expect_bytes(f[1], "announcement"),
            enc.expect_int(f[2], "requester version"),
            _state(f[3], "requester state"),
        )
    if kind == MessageType.PING:
        n(2)
        return Ping(enc.expect_int(f[0], "seq", 0, MAX_SEQ), _items(f[1]))
    if kind == MessageType.ACK:
        n(2)
        return Ack(enc.expect_int(f[0], "seq", 0, MAX_SEQ), _items(f[1]))
    if kind == MessageType.PING_REQ:
        n(3)
        return PingReq(
            enc.expect_int(f[0], "seq", 0, MAX_SEQ), _node_id(f[1], "target"), _items(f[2])
        )
    if kind == MessageType.NACK:
        n(1)
        return Nack(enc.expect_int(f[0], "seq", 0, MAX_SEQ))
    if kind == MessageType.GOSSIP:
        n(1)
        return Gossip(_items(f[0]))
    if kind == MessageType.PUSH_PULL_REQUEST:
        n(3)
        return PushPullRequest(
            enc.expect_bytes(f[0], "state hash", STATE_HASH_LEN),
            _digest_field(f[1]),
            _revocations(f[2]),
        )
    if kind == MessageType.PUSH_PULL_REPLY:
        n(4)
        anns = enc.expect_tuple(f[2], "announcements")
        return PushPullReply(
            enc.expect_bytes(f[0], "state hash", STATE_HASH_LEN),
            _digest_field(f[1]),
            tuple(_announcement_bytes(a) for a in anns),
            _revocations(f[3]),
        )
    if kind == MessageType.STATE_CHECK:
        n(1)
        return StateCheck(enc.expect_bytes(f[0], "state hash", STATE_HASH_LEN))
    if kind == MessageType.MESH_CHECK:
        n(3)
        padding = enc.expect_bytes(f[2], "padding", max_len=MESH_CHECK_SIZE)
        if padding.count(0) != len(padding):
            raise RemoteProtocolError(Reject.MALFORMED, "mesh check padding is not zeros")
        return MeshCheck(
            enc.expect_bytes(f[0], "nonce", NONCE_LEN),
            enc.expect_bytes(f[1], "mesh tag", MESH_TAG_LEN),
        )
    if kind == MessageType.MESH_CHECK_REPLY:
        n(4)
        return MeshCheckReply(
            enc.expect_bytes(f[0], "nonce", NONCE_LEN),
            _node_id(f[1], "node"),
            enc.expect_bytes(f[2], "state hash", STATE_HASH_LEN),
            enc.expect_int(f[3], "members", 0, MAX_SEQ),
        )
    if kind == MessageType.INITIATE:
        n(2)
        if not isinstance(f[1], bool):
            raise RemoteProtocolError(Reject.MALFORMED, "initiate: forward is not a boolean")
        return Initiate(_node_id(f[0], "subject"), f[1])
    raise RemoteProtocolError(Reject.UNKNOWN_TYPE, f"message type {kind}")


def _announcement_bytes(value: Any) -> bytes:
    raw = enc.expect_bytes(value, "announcement")
    if len(raw) < MIN_ANNOUNCEMENT:
        raise RemoteProtocolError(Reject.MALFORMED, f"announcement of {len(raw)} bytes")
    return raw


def _revocations(value: object) -> tuple[bytes, ...]:
    items = enc.expect_tuple(value, "revocations")
    return tuple(enc.expect_bytes(r, "revocation", max_len=MAX_REVOCATION_SIZE) for r in items)


def channel_of(msg: Message) -> Channel:
    """The channel a message is sent on (each message type has exactly one)."""
    (channel,) = msg.CHANNELS
    return channel


_PADDED_SIZE: dict[MessageType, int] = {
    MessageType.JOIN_REQUEST: JOIN_REQUEST_SIZE,
    MessageType.MESH_CHECK: MESH_CHECK_SIZE,
}
"""Requests from strangers on the underlay are padded so that no answer is larger."""


def encode(msg: Message) -> bytes:
    """Envelope + canonical msgpack. A `JoinRequest` is padded to `JOIN_REQUEST_SIZE`, a
    `MeshCheck` to `MESH_CHECK_SIZE`."""
    size = _PADDED_SIZE.get(msg.TYPE)
    if size is not None:
        base = msg.fields()
        pad = max(0, size - len(PREFIX + enc.pack((msg.TYPE.value, *base, b""))))
        # The bin header grows from 2 to 3 bytes at 256 bytes of padding: trim to land exactly.
        for p in (pad, pad - 1, pad - 2):
            data = PREFIX + enc.pack((msg.TYPE.value, *base, bytes(max(p, 0))))
            if len(data) <= size:
                return data
        return data
    return PREFIX + enc.pack((msg.TYPE.value, *msg.fields()))


_DATAGRAM_TYPES = frozenset(
    int(t)
    for t in MessageType
    if t not in (MessageType.PUSH_PULL_REQUEST, MessageType.PUSH_PULL_REPLY)
)


def max_size(channel: Channel) -> int:
    if channel is Channel.STREAM:
        return MAX_STREAM_MESSAGE
    if channel is Channel.UNDERLAY:
        return MAX_UNDERLAY_DATAGRAM
    return MAX_OVERLAY_DATAGRAM


def decode(data: bytes, channel: Channel) -> Message:
    """Strictly decode one message received on `channel`; raises `RemoteProtocolError` only."""
    limit = max_size(channel)
    if len(data) > limit:
        raise RemoteProtocolError(Reject.OVERSIZE, f"{len(data)} bytes on {channel}, limit {limit}")
    if len(data) < len(PREFIX) or data[:2] != MAGIC:
        raise RemoteProtocolError(Reject.MALFORMED, "no meshd magic")
    if data[2] != WIRE_VERSION:
        raise RemoteProtocolError(Reject.UNSUPPORTED_VERSION, f"wire version {data[2]}")
    if channel is Channel.STREAM:
        # The type is the array's first element: a datagram type sent on a stream is refused
        # before its (nested) items are decoded.
        if len(data) > 4 and 0x91 <= data[3] <= 0x9F and data[4] in _DATAGRAM_TYPES:
            raise RemoteProtocolError(
                Reject.WRONG_CHANNEL, f"{MessageType(data[4]).name} is not accepted on the stream"
            )
        value = enc.unpack(
            data[3:], "message", limit, max_array=MAX_STREAM_ITEMS, max_bin=MAX_STREAM_MESSAGE,
            max_arrays=MAX_STREAM_ARRAYS,
        )  # fmt: skip
    else:
        value = enc.unpack(data[3:], "message", limit)
    t = enc.expect_tuple(value, "message")
    if not t:
        raise RemoteProtocolError(Reject.MALFORMED, "empty message")
    kind = enc.expect_int(t[0], "message type", 0, 255)
    msg = _from_fields(kind, t[1:])
    if channel not in msg.CHANNELS:
        raise RemoteProtocolError(
            Reject.WRONG_CHANNEL, f"{type(msg).__name__} is not accepted on the {channel}"
        )
    size = _PADDED_SIZE.get(msg.TYPE)
    if size is not None and len(data) < size:
        raise RemoteProtocolError(
            Reject.MALFORMED,
            f"{type(msg).__name__} of {len(data)} bytes: must be padded to {size}",
        )
    return msg
