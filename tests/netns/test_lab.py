"""The lab harness removes everything it made, also when the body fails."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
from pathlib import Path

import pytest

from meshd.lab import LAB_ROOT, Lab, LabHost
from meshd.labfaults import LabDns, SwitchFaults

pytestmark = pytest.mark.netns


def _exists(path: Path) -> bool:
    return path.exists()


async def test_cleanup_after_an_exception(run_prefix: str) -> None:
    prefix = f"{run_prefix[:6]}lb"
    pid = None
    with pytest.raises(RuntimeError, match="boom"):
        async with Lab(prefix, hosts=2) as lab:
            assert await lab[0].ping(str(lab[1].underlay_v4.ip))
            backend = lab[0].userspace_backend()
            await backend.create("mesh0")
            pid = backend.pid("mesh0")
            lab[0].write_etc("hosts", "192.0.2.1 x\n")
            await lab[1].spawn("sleep", "600")
            raise RuntimeError("boom")
    assert pid is not None
    leftovers = [
        p
        for p in (
            Path("/run/netns") / f"{prefix}-h0",
            Path("/run/netns") / f"{prefix}-h1",
            Path("/run/netns") / f"{prefix}-sw",
            Path("/etc/netns") / f"{prefix}-h0",
            LAB_ROOT / f"{prefix}-h0",
        )
        if await asyncio.to_thread(_exists, p)
    ]
    assert leftovers == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_partition_loss_counters_and_dns(run_prefix: str) -> None:
    async with Lab(f"{run_prefix[:6]}lf", hosts=4) as lab:
        h = lab.hosts
        faults = SwitchFaults(lab)

        async def reach(a: LabHost, b: LabHost) -> bool:
            return await a.ping(str(b.underlay_v6.ip))

        cut = await faults.partition(h[:2], h[2:])
        assert [await reach(h[0], h[1]), await reach(h[2], h[3])] == [True, True]
        assert [await reach(h[0], h[2]), await reach(h[3], h[1])] == [False, False]
        # The cut follows the switch port, not the address.
        await h[2].set_underlay(v6=ipaddress.IPv6Interface(f"{h[2].underlay_v6.ip + 0x100}/64"))
        assert not await reach(h[0], h[2])
        await faults.restore(cut)
        await h[0].wait_ping(str(h[2].underlay_v6.ip), within=5)

        before = await faults.sent_bytes()
        await faults.set_loss([h[3]], 100)
        assert not await reach(h[3], h[0])
        # Working neighbour entries first: after the 100 % phase h3's entry for h0 may be failed,
        # and re-resolving it through a lossy link would drop more than the rule's share.
        await faults.set_loss([h[3]], 0)
        await h[3].wait_ping(str(h[0].underlay_v6.ip), within=5)
        await faults.set_loss([h[3]], 50)  # replaces the rule in place
        r = await h[3].run(
            "ping", "-n", "-q", "-c", "100", "-i", "0.005", "-W", "1", str(h[0].underlay_v6.ip),
            check=False,
        )  # fmt: skip
        lost = int(re.search(r"(\d+)% packet loss", r.stdout).group(1))  # type: ignore[union-attr]
        assert 25 <= lost <= 75  # binomial(100, 0.5) is outside this once in ~10^6 runs
        await faults.set_loss([h[3]], 0)
        await h[3].wait_ping(str(h[0].underlay_v6.ip), within=5)
        after = await faults.sent_bytes()
        # h3 sent about a hundred pings; h1 only neighbour discovery and the like.
        assert after[3] - before[3] > 5000 > 5 * (after[1] - before[1])

        dns = await LabDns.start(lab)
        dns.use(h[1])
        await dns.set("seed.lab", [str(h[0].underlay_v6.ip)])
        assert await h[1].resolve("seed.lab") == [str(h[0].underlay_v6.ip)]
        await dns.set("seed.lab", [str(h[3].underlay_v6.ip)])
        assert await h[1].resolve("seed.lab") == [str(h[3].underlay_v6.ip)]
        assert await h[1].resolve("other.lab") == []
