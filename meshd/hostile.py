"""A hostile member for labs (issue #22): `python -m meshd.hostile --dir NODE_DIR ...`.

Not meshd. It holds a valid certificate and identity key (a lab node's directory) and uses the
WireGuard tunnel that node's meshd set up before it was killed (wireguard-go outlives it), so
its datagrams arrive from its own overlay address, authenticated by WireGuard. It answers
pings (so it stays a live member) and, for `--seconds`, attacks:

* false death claims: every `--claim-every` seconds, a first-hand dead claim about `--victim`
  at its current version to every member, plus suspect claims with invented senders;
* stream bombs: every `--bomb-every` seconds, to one member's stream port, one 16 MiB message of
  nested arrays and one push-pull reply of 16,384 garbage announcements;
* a duplicate WireGuard key: its own announcement (a higher version) carrying the victim's
  WireGuard key.

It prints one JSON line of what it sent when done. The lab kills it by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path

from meshd import keyfiles
from meshd.adapters.store import StateStore
from meshd.core import encoding as enc
from meshd.core import wire
from meshd.core.announce import AnnouncementVerifier, sign_announcement
from meshd.core.cert import TrustAnchor, decode_certificate
from meshd.core.errors import RemoteProtocolError
from meshd.core.identity import SigningKey
from meshd.core.wire import Channel, DeadItem, Gossip, SuspectItem


def _bomb() -> bytes:
    inner = enc.pack([0] * 15)
    n = (16 * 2**20 - 100) // len(inner)
    body = b"\xdd" + n.to_bytes(4, "big") + inner * n
    return wire.PREFIX + b"\x95\x09" + enc.pack(bytes(16)) + b"\xc0" + body + b"\x90"


def _garbage_reply() -> bytes:
    anns = [os.urandom(1000) for _ in range(wire.MAX_STREAM_ITEMS)]
    return wire.PREFIX + enc.pack([9, bytes(16), None, anns, []])


def _stream(host: str, port: int, data: bytes) -> None:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(struct.pack(">I", len(data)) + data)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="meshd.hostile")
    p.add_argument("--dir", type=Path, required=True, help="the lab node's directory")
    p.add_argument("--mesh", required=True)
    p.add_argument("--port", type=int, default=7946)
    p.add_argument("--victim", required=True, help="victim's node name")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--claim-every", type=float, default=1.0)
    p.add_argument("--bomb-every", type=float, default=5.0)
    p.add_argument("--wg-key-of-victim", action="store_true")
    args = p.parse_args(argv)

    identity = SigningKey(keyfiles.read_key(args.dir / "identity.key", secret=True))
    cert = decode_certificate(keyfiles.read_armored(args.dir / "node.cert", keyfiles.CERT_LABEL))
    ca_pub = keyfiles.read_key(args.dir / "ca.pub", secret=False)
    verifier = AnnouncementVerifier(TrustAnchor(args.mesh, (ca_pub,)))
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cert.addresses[0], args.port))
    sock.settimeout(0.05)
    members: dict[bytes, tuple[str, int, str, bytes]] = {}  # id -> overlay, version, name, wg
    sent = {"dead_claims": 0, "forged_suspicions": 0, "bombs": 0, "dup_key_announcements": 0}
    bomb, garbage = _bomb(), _garbage_reply()
    own_version = int(time.time() * 1000) + 10_000
    end = time.monotonic() + args.seconds
    next_claim = next_bomb = time.monotonic() + 1.0
    bombed = 0

    def learn(raw: bytes) -> None:
        try:
            ann = verifier.verify(raw, time.time())
        except RemoteProtocolError:
            return
        if ann.node_id == identity.public:
            return
        old = members.get(ann.node_id)
        if old is None or old[1] < ann.version:
            members[ann.node_id] = (ann.cert.addresses[0], ann.version, ann.name, ann.wg_public_key)

    for raw in StateStore(args.dir / "state").peers():  # what its meshd persisted
        learn(raw)
    while time.monotonic() < end:
        try:
            data, src = sock.recvfrom(65536)
        except TimeoutError:
            data = b""
        if data:
            try:
                msg = wire.decode(data, Channel.OVERLAY)
            except RemoteProtocolError:
                msg = None
            items = getattr(msg, "items", ())
            for item in items:
                if isinstance(item, wire.AnnounceItem):
                    learn(item.announcement)
            if isinstance(msg, wire.Ping):
                sock.sendto(wire.encode(wire.Ack(msg.seq)), src[:2])
        now = time.monotonic()
        victim = [(i, m) for i, m in members.items() if m[2] == args.victim]
        if now >= next_claim and victim:
            next_claim = now + args.claim_every
            vid, (_, vversion, _, vwg) = victim[0]
            dead = wire.encode(Gossip((DeadItem(vid, vversion, identity.public),)))
            forged = wire.encode(Gossip(tuple(
                SuspectItem(vid, vversion, bytes([i]) * 32) for i in range(1, 9))))  # fmt: skip
            for node_id, (overlay, *_rest) in members.items():
                if node_id != vid:
                    sock.sendto(dead, (overlay, args.port))
                    sock.sendto(forged, (overlay, args.port))
                    sent["dead_claims"] += 1
                    sent["forged_suspicions"] += 8
            if args.wg_key_of_victim:
                own_version += 1
                ann = sign_announcement(
                    identity, cert, version=own_version, wg_public_key=vwg,
                    endpoints=(), meshd_port=args.port, issued_at=int(time.time() * 1000),
                )  # fmt: skip
                item = wire.encode(Gossip((wire.AnnounceItem(ann.raw),)))
                for overlay, *_rest in members.values():
                    sock.sendto(item, (overlay, args.port))
                    sent["dup_key_announcements"] += 1
        if now >= next_bomb and members:
            next_bomb = now + args.bomb_every
            targets = sorted(m[0] for m in members.values())
            target = targets[bombed % len(targets)]
            bombed += 1
            _stream(target, args.port, bomb)
            _stream(target, args.port, garbage)
            sent["bombs"] += 2
    print(json.dumps({"sent": sent, "members": sorted(m[2] for m in members.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
