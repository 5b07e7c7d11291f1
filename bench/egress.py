"""`python -m bench egress [--repeat R] [--json]`: gateways with a simulated internet, on real
meshd processes, wireguard-go, nftables and tayga in network namespaces (root).

The topology of tests/netns/test_egress.py (meshd.meshlab.start_egress_lab): a client with an
IPv6-only (ULA) container behind it, two exit gateways (::/0 and 0.0.0.0/0: NAT66, NAT44) of
which one also serves NAT64 (64:ff9b::/96 through tayga), and an internet namespace with an
IPv4-only and an IPv6-only server. R times, in a fresh lab each: check the behaviours, then
cut the active exit's underlay (its eth0 goes down) and measure until the client's traffic
leaves through the other exit; finally stop every meshd and compare each host with its state
before meshd started.

Keys: nat64_ok (the IPv6-only container reached the IPv4-only server via 64:ff9b::/96 only, and
the server saw gateway A), nat44_ok (the client reached it through the IPv4 exit, seen as that
exit), nat66_ok (the IPv6-only server saw the exit's global address, from the client and from
the container),
inbound_blocked (the internet, routing the mesh prefix to the exit, reached the exit's overlay
address but not the client), protected_blocked (the management range answered the gateway but
not the client), clean_stop (no rule, route, table, sysctl change or process left),
gateway_failover_s (median of R; resolution about 0.5 s, the fetch timeout), the runs, repeat,
machine. A `_ok`/`_blocked` key is true only when it held in every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from meshd.lab import Lab, fetch
from meshd.meshlab import start_egress_lab


async def one_run(index: int, workdir: Path) -> dict[str, object]:
    prefix = f"be{os.getpid() % 10000:04d}{index % 100:02d}"[:8]
    async with Lab(prefix, hosts=3) as lab:
        e = await start_egress_lab(lab, workdir)
        gw_a = e.gateways[0]
        active = await e.exit_gateway()
        if active is None:
            raise RuntimeError("the client chose no exit gateway")
        active4 = await e.exit_gateway("0.0.0.0/0")
        server_v6, server_v4 = str(e.internet.server_v6), str(e.internet.server_v4)
        management = str(e.internet.management_v6)
        # Each check as (what was seen, what must be seen).
        nat64 = [
            (await e.container_fetch(server_v4, within=1.0), None),  # no IPv4 at all...
            (await e.container_fetch(e.nat64_address), e.uplink_v4(gw_a)),  # ...but NAT64
        ]
        nat44 = [(await e.fetch(server_v4), e.uplink_v4(active4) if active4 else "an exit")]
        nat66 = [
            (await e.fetch(server_v6), e.uplink_v6(active)),
            (await e.container_fetch(server_v6), e.uplink_v6(active)),
        ]
        protected_blocked = (
            await fetch(active.host.netns, management) == e.uplink_v6(active)
            and await e.fetch(management, within=1.0) is None
        )
        inbound_blocked = await e.inbound_answers(active) == (True, False)
        failover_s = await e.failover(active)
        after = await e.stop_all()
        clean_stop = after == {host: e.baseline[host] for host in after}
        return {
            "nat64_ok": all(seen == want for seen, want in nat64),
            "nat44_ok": all(seen == want for seen, want in nat44),
            "nat66_ok": all(seen == want for seen, want in nat66),
            "inbound_blocked": inbound_blocked,
            "protected_blocked": protected_blocked,
            "clean_stop": clean_stop,
            "gateway_failover_s": round(failover_s, 3),
        }


async def run(repeat: int) -> dict[str, object]:
    runs = []
    for i in range(repeat):
        with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
            runs.append(await one_run(i, Path(tmp)))
    flags = (
        "nat64_ok",
        "nat44_ok",
        "nat66_ok",
        "inbound_blocked",
        "protected_blocked",
        "clean_stop",
    )
    failovers = [float(r["gateway_failover_s"]) for r in runs]  # type: ignore[arg-type]
    return {
        **{flag: all(bool(r[flag]) for r in runs) for flag in flags},
        "gateway_failover_s": round(statistics.median(failovers), 3),
        "gateway_failover_s_runs": failovers,
        "repeat": repeat,
        "membership": "lan",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.release()}",
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench egress",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeat", type=int, default=3, help="labs to run (failover median)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench egress: needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print("bench egress: --repeat must be at least 1", file=sys.stderr)
        return 2
    result = asyncio.run(run(args.repeat))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:26} {v}")
    return 0
