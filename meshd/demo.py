"""The README's demo (`scripts/dev demo`): a five-node mesh on this machine.

Five network namespaces on a bridge play five machines. A mesh CA is made, each node gets a
certificate, and each runs meshd with wireguard-go; four of them know only the first as a seed.
The demo waits until every node has every other as a live WireGuard peer, prints
`meshctl status` of one node, pings every pair over the IPv6 and IPv4 overlay, shows a
tampered certificate being refused, and removes everything. `--keep` leaves the mesh running
until Ctrl-C, for exploring with `ip netns exec` and `meshctl --socket`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from meshd import keyfiles
from meshd.core.cert import decode_certificate
from meshd.core.errors import RemoteProtocolError
from meshd.lab import Lab
from meshd.meshlab import MeshdNode, MeshLab

NAMES = ["alpha", "bravo", "charlie", "delta", "echo"]


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


async def ping_all(nodes: list[MeshdNode]) -> list[str]:
    """Ping every ordered pair over both overlay families; returns the failures."""

    async def one(a: MeshdNode, b: MeshdNode, addr: str) -> str | None:
        return None if await a.host.ping(addr, within=2) else f"{a.name} -> {b.name} ({addr})"

    jobs = [
        one(a, b, addr) for a in nodes for b in nodes if a is not b for addr in b.cert.addresses
    ]
    return [r for r in await asyncio.gather(*jobs) if r is not None]


def tampered_certificate_is_refused(node: MeshdNode) -> bool:
    raw = bytearray(keyfiles.read_armored(node.directory / "node.cert", keyfiles.CERT_LABEL))
    i = raw.index(node.name.encode())
    raw[i : i + 5] = b"mallo"
    try:
        decode_certificate(bytes(raw))
    except RemoteProtocolError as exc:
        print(f"tampered certificate of {node.name} claiming to be 'mallo...': refused ({exc})")
        return True
    return False


async def demo(keep: bool, workdir: Path) -> int:
    prefix = f"demo{os.getpid() % 1000:03d}"
    say(f"creating {len(NAMES)} hosts (network namespaces {prefix}-h0..h{len(NAMES) - 1})")
    async with Lab(prefix, hosts=len(NAMES)) as lab:
        mesh = MeshLab(lab, workdir, mesh="demo")
        say(f"mesh CA created in {workdir / 'ca'}; issuing certificates")
        nodes = [
            mesh.add_node(i, seeds=[0] if i else [], name=name) for i, name in enumerate(NAMES)
        ]
        for n in nodes:
            print(
                f"  {n.name:8} {n.host.netns}  underlay {n.host.underlay_v6.ip}  "
                f"overlay {', '.join(n.cert.addresses)}"
            )
        say("starting meshd on every host (the others know only alpha as a seed)")
        start = time.monotonic()
        took = await mesh.start_mesh(nodes, within=60)
        print(
            f"full mesh after {time.monotonic() - start:.1f} s "
            f"(every node has every other alive with a WireGuard handshake; "
            f"{took:.1f} s after the last start)"
        )
        say(f"meshctl status on {nodes[2].name}")
        meshctl = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshd.cli", "--socket", str(nodes[2].socket), "status"
        )
        await meshctl.wait()
        say("pinging every pair over the IPv6 and IPv4 overlay")
        failures = await ping_all(nodes)
        pairs = len(nodes) * (len(nodes) - 1) * 2
        print(f"{pairs - len(failures)} of {pairs} pings answered")
        for f in failures:
            print(f"  no answer: {f}")
        say("a certificate edited by an attacker")
        refused = tampered_certificate_is_refused(nodes[1])
        if keep:
            say("mesh kept running; press Ctrl-C to tear it down. Try:")
            print(f"  {sys.executable} -m meshd.cli --socket {nodes[0].socket} status")
            print(f"  ip netns exec {nodes[0].host.netns} ping {nodes[4].overlay_v6}")
            print(f"  logs: {workdir}/*/meshd.log")
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
        say("stopping every node (graceful leave) and removing the hosts")
        codes = await asyncio.gather(*(mesh.stop(n) for n in nodes))
        print(f"meshd exit codes: {list(codes)}")
        for n, code in zip(nodes, codes, strict=True):
            if code != 0:
                print(f"--- {n.name} exited {code}; the end of its log:\n{n.log_tail(40)}")
    ok = not failures and refused and all(c == 0 for c in codes)
    say("demo " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/dev demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--keep", action="store_true", help="keep the mesh running until Ctrl-C")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces, WireGuard interfaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="meshd-demo-") as tmp:
        try:
            return asyncio.run(demo(args.keep, Path(tmp)))
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
