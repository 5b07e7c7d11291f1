"""Gateways with a simulated internet (meshd.meshlab.start_egress_lab): NAT64 through tayga for
an IPv6-only container, NAT66/NAT44 exits that are egress only (also for that container),
control-plane protection, failover between two exits, a clean stop, and a restart after a
kill."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.lab import Lab, LabHost, fetch, wait_for
from meshd.meshlab import EgressLab, host_traces, start_egress_lab

pytestmark = pytest.mark.netns


@pytest.fixture
async def egress_lab(run_prefix: str, tmp_path: Path) -> AsyncIterator[EgressLab]:
    async with Lab(f"{run_prefix[:6]}eg", hosts=3) as lab:
        yield await start_egress_lab(lab, tmp_path)


async def test_nat64_nat66_protection_failover_and_clean_stop(egress_lab: EgressLab) -> None:
    e = egress_lab
    gw_a, gw_b = e.gateways
    # While meshd runs (forwarding was off before): every host forwards both families (exits
    # for both, NAT64, the client's container bridge); the client has the exit rules of both.
    running = {n.name: await host_traces(n.host) for n in (gw_a, gw_b, e.client)}
    for name, traces in running.items():
        assert traces["forwarding"] == ["1", "1"] and traces["nft_table"], name
    assert sorted(r["priority"] for r in running["client"]["rules"]) == [5208, 5208, 5209, 5209]

    # NAT64: the container is IPv6-only (a ULA address, nothing else); 64:ff9b::93.184.216.34
    # reaches the IPv4-only server through tayga on gateway A, which the server sees as the
    # source. The client itself gets there too.
    assert await e.container_fetch(str(e.internet.server_v4), within=1.0) is None
    assert await e.container_fetch(e.nat64_address) == e.uplink_v4(gw_a)
    assert await e.fetch(e.nat64_address) == e.uplink_v4(gw_a)

    # NAT66 exit: the IPv6-only server sees the chosen exit gateway's global address; so it
    # does from the container (masqueraded into the mesh by the client, out of it by the
    # exit). NAT44 exit: the IPv4-only server sees the IPv4 exit's address.
    active = await e.exit_gateway()
    assert active is not None
    assert await e.fetch(str(e.internet.server_v6)) == e.uplink_v6(active)
    assert await e.container_fetch(str(e.internet.server_v6)) == e.uplink_v6(active)
    active4 = await e.exit_gateway("0.0.0.0/0")
    assert active4 is not None
    assert await e.fetch(str(e.internet.server_v4)) == e.uplink_v4(active4)

    # Control-plane protection: the management range answers the gateway itself, never a
    # mesh client routed through it.
    management = str(e.internet.management_v6)
    assert await fetch(active.host.netns, management, 80) == e.uplink_v6(active)
    assert await e.fetch(management, within=1.0) is None

    # Egress only: with the mesh prefix routed to the gateway, the internet reaches the
    # gateway's own overlay address, not the client behind it.
    assert await e.inbound_answers(active) == (True, False)

    # Failover: the active exit's host loses its mesh underlay; the client moves ::/0 to the
    # other exit once membership suspects it, and the server sees the other gateway.
    took = await e.failover(active)
    print(f"exit failover from {active.name}: {took:.2f} s")

    # A graceful stop removes every rule, route, table, sysctl change and process: each host
    # is as it was before meshd started.
    after = await e.stop_all()
    assert after == {host: e.baseline[host] for host in after}


def _named(pids: list[int], name: str) -> list[int]:
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                found.append(pid)
    return found


async def _taygas(host: LabHost) -> list[int]:
    return _named(await host.processes(), "tayga")


async def test_a_killed_gateway_restarts_over_its_leftovers(egress_lab: EgressLab) -> None:
    e = egress_lab
    gw_a = e.gateways[0]
    assert await e.fetch(e.nat64_address) == e.uplink_v4(gw_a)
    [old_tayga] = await _taygas(gw_a.host)

    # SIGKILL: no cleanup at all; wireguard-go, tayga, the tun, the table and the sysctls
    # stay behind.
    assert await e.mesh.stop(gw_a, signal.SIGKILL) == -9
    assert await _taygas(gw_a.host) == [old_tayga]

    # The new run takes over: the old tayga (which holds the tun) is stopped, NAT64 works
    # through a new one, and a graceful stop still restores the sysctls found before the
    # *first* run (saved in the state directory, not read again from the changed system).
    await e.mesh.start(gw_a)
    await e.mesh.wait_api(gw_a)

    async def nat64_again() -> bool:
        return await e.fetch(e.nat64_address, within=0.5) == e.uplink_v4(gw_a)

    await wait_for(nat64_again, 20, "NAT64 through the restarted gateway", 0.0)
    [new_tayga] = await _taygas(gw_a.host)
    assert new_tayga != old_tayga
    after = await e.stop_all()
    assert after == {host: e.baseline[host] for host in after}
