"""Key rotation scenarios on real meshd processes: a PSK epoch change, a WireGuard key rotation
and a mesh PSK secret change, each measured by 200 pings at 10 ms across the change. Shared by
tests/netns/test_keys.py (which asserts no loss) and `python -m bench rotation` (which prints
the figures).

    async with Lab(prefix, hosts=2) as lab:
        mesh = MeshLab(lab, workdir)
        a, b = mesh.add_node(0, seeds=[]), mesh.add_node(1, seeds=[0])
        give_psk(mesh, [a, b], period=10)
        await mesh.start_mesh([a, b])
        result = await across_psk_epoch(a, b)
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd import keyfiles
from meshd.core.psk import PskChain, PskSecrets, epoch_at
from meshd.lab import wait_for
from meshd.meshlab import MeshdNode, MeshLab

PINGS = 200
INTERVAL_S = 0.01
LEAD_S = 0.8
"""Pinging starts this long before the scheduled change, so that the change falls inside the
two seconds of pings."""

_REPLY = re.compile(r"^\[(\d+\.\d+)\] .* icmp_seq=(\d+) ")


@dataclass(frozen=True)
class PingSeries:
    sent: int
    received: int
    """Distinct sequence numbers answered (late answers count: they were not lost)."""
    max_gap_ms: float
    """Longest time between two consecutive answers, and from the first send to the first."""

    @property
    def lost(self) -> int:
        return self.sent - self.received


async def ping_series(node: MeshdNode, address: str, count: int = PINGS) -> PingSeries:
    """`count` pings at 10 ms from `node` to `address`; answers are timestamped as they arrive
    (`ping -D`), so the longest silence is measured, not guessed."""
    start = time.time()
    r = await node.host.run(
        "ping", "-n", "-D", "-i", str(INTERVAL_S), "-c", str(count), "-W", "2", address,
        check=False, within=count * INTERVAL_S * 5 + 10,
    )  # fmt: skip
    seen: dict[int, float] = {}
    for line in r.stdout.splitlines():
        m = _REPLY.match(line)
        if m:
            seen.setdefault(int(m.group(2)), float(m.group(1)))
    times = sorted(seen.values())
    gaps = [b - a for a, b in zip([start, *times], times, strict=False)]
    return PingSeries(count, len(seen), round(max(gaps, default=0.0) * 1000, 1))


async def ping_across(node: MeshdNode, address: str, at: float) -> PingSeries:
    """Ping so that the change scheduled at Unix time `at` falls within the series."""
    await asyncio.sleep(max(0.0, at - LEAD_S - time.time()))
    return await ping_series(node, address)


def give_psk(mesh: MeshLab, nodes: list[MeshdNode], period: int) -> Path:
    """A new mesh PSK secret (epoch `period` s), copied 0600 to each node and configured."""
    chain = PskChain(period, epoch_at(time.time(), period), os.urandom(32))
    source = mesh.workdir / "psk.secret"
    keyfiles.write_secret(source, chain.to_text().encode(), overwrite=True)
    for n in nodes:
        copy_psk(source, n)
        n.extra["psk_file"] = str(n.directory / "psk.secret")
        mesh.write_config(n)
    return source


def copy_psk(source: Path, node: MeshdNode) -> None:
    keyfiles.write_secret(node.directory / "psk.secret", source.read_bytes(), overwrite=True)


async def device_psks(node: MeshdNode) -> dict[bytes, bytes | None]:
    """Peer public key -> preshared key, as WireGuard (wireguard-go or kernel) holds them now."""
    status = await node.wireguard_status()
    return {k: s.peer.preshared_key for k, s in status.peers.items()}


async def _status(node: MeshdNode) -> dict[str, Any]:
    status = await node.status()
    if status is None:
        raise RuntimeError(f"meshd {node.name} does not answer:\n{node.log_tail()}")
    return status


async def pair_psk(a: MeshdNode, b: MeshdNode) -> tuple[bytes | None, bytes | None]:
    """The PSK `a` uses towards `b` and the one `b` uses towards `a` (equal when they agree)."""
    ka = keyfiles.decode_key((await _status(a))["node"]["wg_public_key"], "a")
    kb = keyfiles.decode_key((await _status(b))["node"]["wg_public_key"], "b")
    return (await device_psks(a)).get(kb), (await device_psks(b)).get(ka)


async def across_psk_epoch(a: MeshdNode, b: MeshdNode) -> tuple[PingSeries, dict[str, Any]]:
    """Ping a -> b across the next PSK epoch change. Returns the series and what changed."""
    psk = (await _status(a))["node"]["psk"]
    before = await pair_psk(a, b)
    series = await ping_across(a, b.overlay_v6, psk["next_change_at"])

    async def changed() -> bool:
        now = await pair_psk(a, b)
        return now[0] is not None and now[0] == now[1] and now[0] != before[0]

    await wait_for(changed, 5, "both sides on the new epoch's PSK")
    return series, {"before": before, "after": await pair_psk(a, b), "epoch": psk["epoch"]}


async def across_wg_rotation(a: MeshdNode, b: MeshdNode) -> tuple[PingSeries, dict[str, Any]]:
    """`meshctl rotate` on b, then ping a -> b across b's switch."""
    old = (await _status(b))["node"]["wg_public_key"]
    answer = await b.client.rotate()
    series = await ping_across(a, b.overlay_v6, answer["switch_at"])
    new = answer["next_key"]

    async def a_has_only_the_new_key() -> bool:
        peers = await a.wireguard_peers()
        keys = {keyfiles.encode_key(k).decode().strip() for k in peers}
        return new in keys and old not in keys

    await wait_for(a_has_only_the_new_key, 5, f"{a.name} to replace {b.name}'s WireGuard key")
    return series, {"old": old, "new": new}


async def across_psk_secret_change(
    mesh: MeshLab, nodes: list[MeshdNode], a: MeshdNode, b: MeshdNode, lead_s: float = 6.0
) -> tuple[PingSeries, dict[str, Any]]:
    """Roll the mesh to a new PSK secret active `lead_s` from now (as `meshctl psk roll`
    does), hand the file to every node with SIGHUP, and ping a -> b across the activation."""
    source = mesh.workdir / "psk.secret"
    current = PskSecrets.from_text((a.directory / "psk.secret").read_text(), "psk")
    at = int(time.time() + lead_s)
    chain = current.active(time.time())
    new = PskChain(chain.period, epoch_at(time.time(), chain.period), os.urandom(32), at)
    rolled = PskSecrets((*current.chains, new))
    keyfiles.write_secret(source, rolled.to_text().encode(), overwrite=True)
    for n in nodes:
        copy_psk(source, n)
        assert n.proc is not None
        n.proc.send_signal(signal.SIGHUP)

    async def announced() -> bool:
        for n in nodes:
            psk = (await _status(n))["node"]["psk"]
            if new.secret_id.hex() not in psk["secret_ids"]:
                return False
        return True

    await wait_for(announced, max(1.0, at - time.time() - 1.5), "every node to hold the new secret")
    series = await ping_across(a, b.overlay_v6, at)

    async def switched() -> bool:
        psk = (await _status(a))["node"]["psk"]
        pair = await pair_psk(a, b)
        return psk["active_id"] == new.secret_id.hex() and pair[0] == pair[1]

    await wait_for(switched, 5, "both sides on the new secret")
    return series, {"secret_id": new.secret_id.hex()}
