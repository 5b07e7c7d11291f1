"""Membership figures from the simulator: `python -m bench sim --nodes 1000 --json`.

All times are simulated seconds on a LAN-like network (0.2-1 ms one-way delay, default LAN
settings). One mesh is built pre-converged and then, in order: idle traffic is measured, a few
nodes join one after the other, a few crash, a few leave, then random loss is switched on to
count false positives. Each "..._all_s" figure is the time until the *last* live node saw the
change (median and worst of `--trials`).

Merging (issue 21), each on a mesh of its own, until every node holds every other alive:

split_merge_s       two halves formed apart around two seeds (a cold start where each seed found
                    only itself, or a partition at start-up): every node lists both seeds; the
                    halves cannot reach each other for 30 s, then they can.
tombstone_merge_s   one mesh cut in two for longer than the dead timeout and the tombstones
                    (tombstone_ttl 60 s for this case, else LAN settings) and no seeds at all:
                    only the forgotten members' addresses (contacts) are left to look across to.
*_messages_per_node  messages sent per node from the heal until one mesh (joins, push-pulls,
                    the gossip of N/2 new members, probes of them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable

from meshd.core.config import MembershipConfig
from meshd.core.membership import PeerDead, PeerSuspected
from meshd.core.wire import MemberState
from tests.sim.simnet import SimNet

# Per overlay datagram on the wire: inner IPv6 + UDP (48), WireGuard data header + tag (32),
# outer IPv4 + UDP (28).
WIRE_OVERHEAD = 108


# Measured: ~350 MB of records for 1,000 nodes (10^6 records).
BYTES_PER_RECORD = 350


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**63


def _until(net: SimNet, cond: Callable[[], bool], limit: float) -> float:
    t0 = net.now
    if not net.run_for(limit, cond):
        return float("inf")
    return net.now - t0


def _all_see(net: SimNet, node_id: bytes, state: MemberState, skip: int) -> Callable[[], bool]:
    def cond() -> bool:
        return all(v is state for i, v in net.views(node_id).items() if i != skip)

    return cond


def _loss_run(net: SimNet, loss: float, seconds: float) -> dict[str, float]:
    net.loss = loss
    net.recorded.clear()
    up = len(net.up_indices())
    net.run_for(seconds)
    net.loss = 0.0
    deaths = {(r.event.announcement.node_id, r.event.announcement.version)
              for r in net.recorded if isinstance(r.event, PeerDead)}  # fmt: skip
    suspicions = {(r.event.node_id, r.event.version)
                  for r in net.recorded if isinstance(r.event, PeerSuspected)}  # fmt: skip
    node_hours = up * seconds / 3600
    net.run_for(30)  # let refutations settle before the next phase
    return {
        "false_positives_per_node_hour": len(deaths) / node_hours,
        "suspicions_per_node_hour": len(suspicions) / node_hours,
        "node_hours": node_hours,
    }


def _one_mesh(net: SimNet) -> bool:
    up = len(net.up_indices())
    return all(h.core.live_count == up - 1 for h in net.hosts if h.up and h.core)


def _until_one_mesh(net: SimNet, limit: float, step: float = 0.05) -> float:
    """Simulated seconds until one mesh, checked every `step` (a check per event would cost
    O(N) for each of the ~N^2/2 events of a merge)."""
    t0 = net.now
    while net.now - t0 < limit:
        net.run_for(step)
        if _one_mesh(net):
            return net.now - t0
    return float("inf")


def _all_forgotten(net: SimNet, own_half: int) -> bool:
    return all(len(h.core.members()) == own_half for h in net.hosts if h.core)


def merge_run(nodes: int, seed: int) -> dict[str, object]:
    half = nodes // 2
    left, right = range(half), range(half, nodes)

    # Two meshes formed apart, every node knowing both seeds.
    net = SimNet(nodes, seed=seed)
    net.partition([left, right])
    net.start_converged(left)
    net.start_converged(right)
    seeds = [net.underlay_address(0), net.underlay_address(half)]
    for h in net.hosts:
        assert h.core is not None
        h.core.set_seeds(seeds, net.now)
    net.run_for(30)
    net.heal()
    m0 = net.stats.sent_msgs
    split = _until_one_mesh(net, 120)
    split_msgs = (net.stats.sent_msgs - m0) / nodes
    merges = sum(h.core.stats["merges"] for h in net.hosts if h.core)

    # A partition that outlives the tombstones; no seeds.
    config = dataclasses.replace(MembershipConfig.lan(), tombstone_ttl=60.0)
    net = SimNet(nodes, seed=seed + 1, config=config)
    net.start_converged()
    net.run_for(2)
    net.partition([left, right])
    net.run_for(config.tombstone_ttl)
    t0 = net.now
    while net.now - t0 < 600 and not _all_forgotten(net, len(left) - 1):
        net.run_for(5)  # the last deaths are found a few probe cycles after the cut
    forgotten = _all_forgotten(net, len(left) - 1)
    net_cut_s = net.now - t0 + config.tombstone_ttl
    net.heal()
    m0 = net.stats.sent_msgs
    tomb = _until_one_mesh(net, 2 * config.contact_retry_max)
    tomb_msgs = (net.stats.sent_msgs - m0) / nodes
    return {
        "split_merge_s": round(split, 3),
        "split_merge_messages_per_node": round(split_msgs, 1),
        "split_merge_joins": merges,
        "tombstone_merge_s": round(tomb, 3),
        "tombstone_merge_messages_per_node": round(tomb_msgs, 1),
        "tombstone_merge_forgotten_before": forgotten,
        "tombstone_merge_cut_s": round(net_cut_s, 1),
    }


def run(nodes: int, trials: int, seed: int, loss_seconds: float | None) -> dict[str, object]:
    wall0 = time.perf_counter()
    net = SimNet(nodes, seed=seed, record=lambda e: isinstance(e, PeerDead | PeerSuspected))
    base = nodes - trials
    net.start_converged(range(base))
    wall_setup = time.perf_counter() - wall0
    net.run_for(5)

    # Idle traffic: nothing happens but probes and push-pull hash checks.
    idle_s = 60.0
    b0, m0, o0 = net.stats.sent_bytes, net.stats.sent_msgs, net.stats.by_channel["overlay"]
    net.run_for(idle_s)
    idle_bytes = (net.stats.sent_bytes - b0) / base / idle_s
    idle_msgs = (net.stats.sent_msgs - m0) / base / idle_s
    idle_dgrams = (net.stats.by_channel["overlay"] - o0) / base / idle_s

    joins, crashes, leaves = [], [], []
    join_msgs = []
    for k in range(trials):
        j = base + k
        m0 = net.stats.sent_msgs
        net.start(j, seeds=[0, 1, 2])
        joins.append(_until(net, _all_see(net, net.hosts[j].node_id, MemberState.ALIVE, j), 30))
        net.run_for(2)
        join_msgs.append((net.stats.sent_msgs - m0) / nodes)
    for k in range(trials):
        c = 10 + k
        net.crash(c)
        crashes.append(_until(net, _all_see(net, net.hosts[c].node_id, MemberState.DEAD, c), 60))
        net.run_for(2)
    for k in range(trials):
        lv = 20 + k
        core = net.hosts[lv].core
        assert core is not None
        core.leave(net.now)
        net._after(lv)
        leaves.append(_until(net, _all_see(net, net.hosts[lv].node_id, MemberState.LEFT, lv), 30))
        net.run_for(2)
        net.crash(lv)  # the process exits after leaving

    wall_scenarios = time.perf_counter() - wall0 - wall_setup
    up = len(net.up_indices())
    if loss_seconds is None:
        # Enough node-hours to mean something, bounded wall time.
        loss_seconds = min(3600.0, max(60.0, 20 * 3600 / up))
    lossy5 = _loss_run(net, 0.05, loss_seconds)
    lossy10 = _loss_run(net, 0.10, loss_seconds)

    def med(xs: list[float]) -> float:
        return round(statistics.median(xs), 4)

    return {
        "nodes": nodes,
        "settings": "MembershipConfig.lan()",
        "join_all_s": med(joins),
        "join_all_s_max": round(max(joins), 4),
        "crash_all_s": med(crashes),
        "crash_all_s_max": round(max(crashes), 4),
        "leave_all_s": med(leaves),
        "leave_all_s_max": round(max(leaves), 4),
        "false_positives_per_node_hour_5pct": lossy5["false_positives_per_node_hour"],
        "suspicions_per_node_hour_5pct": round(lossy5["suspicions_per_node_hour"], 3),
        "false_positives_per_node_hour_10pct": lossy10["false_positives_per_node_hour"],
        "suspicions_per_node_hour_10pct": round(lossy10["suspicions_per_node_hour"], 3),
        "loss_node_hours_each": round(lossy5["node_hours"], 2),
        "idle_bytes_per_node_s": round(idle_bytes, 1),
        "idle_wire_bytes_per_node_s": round(idle_bytes + idle_dgrams * WIRE_OVERHEAD, 1),
        "idle_messages_per_node_s": round(idle_msgs, 3),
        "join_messages_per_node": round(statistics.median(join_msgs), 2),
        "trials": trials,
        "seed": seed,
        "wall_s": round(time.perf_counter() - wall0, 1),
        # Where the wall time goes: building the converged mesh (every node given every
        # record), the idle/join/crash/leave phases, and the loss runs' node-hours.
        "wall_setup_s": round(wall_setup, 1),
        "wall_scenarios_s": round(wall_scenarios, 1),
        "wall_loss_s": round(time.perf_counter() - wall0 - wall_setup - wall_scenarios, 1),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench sim", description=__doc__)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--loss-seconds",
        type=float,
        default=None,
        help="simulated seconds per loss run (default: ~20 node-hours, 60-3600 s)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.nodes < 30:
        print("bench sim: --nodes must be at least 30", file=sys.stderr)
        return 2
    need = args.nodes**2 * BYTES_PER_RECORD
    if need > _available_memory():
        print(
            f"bench sim: {args.nodes} nodes need about {need / 2**30:.0f} GiB (every simulated "
            f"node holds all {args.nodes} records, ~{BYTES_PER_RECORD} bytes each in Python); "
            f"only {_available_memory() / 2**30:.0f} GiB available. See docs/membership.md.",
            file=sys.stderr,
        )
        return 2
    result = run(args.nodes, args.trials, args.seed, args.loss_seconds)
    wall0 = time.perf_counter()
    result |= merge_run(args.nodes, args.seed)
    result["wall_merge_s"] = round(time.perf_counter() - wall0, 1)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:40} {v}")
    return 0
