"""Membership settings: one dataclass, every field explained, presets for LAN and for tests.

The presets follow memberlist's `DefaultLANConfig` where it suits a mesh whose probes travel
inside WireGuard on a LAN (sub-millisecond RTT), and depart from it where the meshd targets
(detect a crash everywhere in under 4 s at 1,000 nodes) require; each default says why.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MembershipConfig:
    """Timers and fan-outs of the SWIM/Lifeguard protocol. Times are seconds."""

    probe_interval: float = 0.5
    """Time between two probe ticks of a node (SWIM's protocol period T', section 3.1): an
    unanswered probe becomes a suspicion at the next tick. Default 0.5 s: half memberlist's
    1 s, because the probes of a rumoured suspect, whose failures are the confirmations that
    shorten suspicion (Lifeguard IV-B), are made at the next tick. Ticks whose members all gave
    first-hand evidence within a cycle send nothing (membership.py): idle traffic is set by
    `cycle_interval`, not by this."""

    cycle_interval: float = 0.75
    """Each live member's share of the probe cycle: a member is checked (probed, or heard from
    first-hand) once per cycle of live members x this (membership.py). It sets the idle
    traffic: every pair exchanges one ping and ack per cycle, so a node takes part in about
    1 / cycle_interval exchanges per second, whatever N. Default 0.75 s, 1.5 probe intervals:
    a third less idle traffic than a cycle of N x 0.5 s (D22), for ~0.25 s more to the first
    probe of a crashed node (the members' checks of it fall due at random moments, about one
    per cycle_interval); probe timeout and suspicion, the rest of detection, do not change.
    Not below `probe_interval`: checks would fall due faster than ticks can make them."""

    probe_timeout: float = 0.2
    """Wait for a direct ack before asking others to probe indirectly. Default 0.2 s: LAN RTT
    inside the tunnel is below 1 ms, so 200x leaves room for a busy or paging peer."""

    first_probe_after: float = 1.0
    """A member that became live (joined, or came back from dead) is probed no sooner than this.
    Its tunnel may not be up yet: the member may not know of us yet (its WireGuard drops our
    handshake, which is retried after 1 s, see `handshake_restart_in`), and the data plane
    takes a moment to add a peer. A probe in that window fails and raises a false suspicion;
    after a 30-node partition healed, every node probed some member in it. Default 1 s: the first
    probe of a member is otherwise at a random moment of the cycle, so detecting a node that
    crashes right after joining takes at most this much longer."""

    degraded_after: int = 2
    """Probes of a live member in a row answered only through relays (its direct probe failed)
    after which the pair is degraded (`PairDegraded`): the member is alive, but we cannot talk
    to it directly. Default 2: one failed direct probe happens under load or loss; two, made a
    probe interval apart, mean the path is broken. Detection takes about a probe cycle until
    the first failure, then one more tick."""

    degraded_recheck: float = 2.0
    """A degraded pair is probed again this often (besides its turn in the cycle), so its repair
    is noticed within seconds. Default 2 s: a few probes per broken pair, none for a healthy one."""

    initiate_min_interval: float = 5.0
    """A member's request (through another member) that we start a WireGuard handshake towards
    it is honoured at most this often (`HandshakeWanted`). Default 5 s: WireGuard's own retry
    interval (REKEY_TIMEOUT); more often would only make wireguard-go drop initiations."""

    indirect_checks: int = 3
    """k of SWIM section 3.1: members asked to probe on our behalf. Default 3 (memberlist):
    a false suspicion then needs all three relays to fail as well."""

    suspicion_mult: float = 1.0
    """Lifeguard's alpha (section IV-B): minimum suspicion timeout = mult * log10(N) * probe
    interval. Default 1: 1.5 s at N=1,000. A refutation reaches the suspected node by eager
    forwarding within milliseconds, so the minimum only has to cover loss and retries."""

    suspicion_min_floor: float = 2.0
    """Lower bound on the minimum suspicion timeout, in seconds, whatever N. Default 2 s: a
    real daemon can stall for hundreds of milliseconds (start-up, a large reconcile, a busy
    host), and below ~1 s such stalls were declared deaths in 30-node labs on two cores. At
    N=1,000 the Lifeguard minimum (1.5 s) is close to it, so detection there barely changes."""

    suspicion_max_mult: float = 4.0
    """Lifeguard's beta: a suspicion nobody confirms waits max = beta * min. Default 4 (memberlist
    uses 6): a lone (probably false) suspicion waits 6 s at N=1,000, ample for a refutation."""

    suspicion_confirmations: int = 3
    """Lifeguard's K: independent suspicions that shrink the timeout to its minimum. Default 3:
    confirmations arrive about once per probe interval after a real crash."""

    awareness_max: int = 8
    """Lifeguard local health multiplier ceiling (section IV-A): probe interval and timeout are
    scaled by (score + 1), score in [0, awareness_max - 1]. Default 8 as memberlist."""

    claim_rate: float = 100.0
    """Suspect/dead claims one member may send us per second (`claimguard.py`); beyond it they
    are dropped as `rate_limited`. Default 100/s, burst `claim_burst`: far above what gossip
    carries from one member (a 64-item datagram per gossip round at most, and claims are about
    members that failed), far below what costs a loop time."""

    claim_burst: float = 400.0
    """Claims a quiet member may send at once. Default 400: a member relaying the news of a
    large part of the mesh failing at once (a partition) is not cut short."""

    claim_strikes: int = 3
    """Refuted first-hand claims of one member within `claim_strike_window` after which its
    claims are ignored for `claim_ignore_for` (a refuted dead claim counts as all of them).
    Default 3: a member with a lossy link raises a false suspicion now and then, not three a
    minute."""

    claim_strike_window: float = 60.0
    """How long a strike counts, in seconds. Default 60 s."""

    claim_ignore_for: float = 600.0
    """How long a struck-out member's claims are ignored, in seconds. Default 10 min: an attacker
    gets one effective claim per 10 minutes, an honest member misses only its share of
    confirmations meanwhile."""

    claim_refute_window: float = 5.0
    """A first-hand claim refuted within this many seconds of arriving is a strike; later, it
    was a partition or a restart, not a lie. Default 5 s: a live member refutes within a round
    trip of hearing a claim, while a crashed one takes longer than that to come back."""

    gossip_interval: float = 0.2
    """Period of gossip rounds that send queued broadcasts to `gossip_nodes` random members.
    Default 0.2 s (memberlist LAN). Rounds with an empty queue send nothing."""

    gossip_nodes: int = 3
    """Members per gossip round. Default 3 (memberlist LAN)."""

    eager_fanout: int = 3
    """Members a node forwards fresh news to at once, on first receipt (besides the queue).
    Default 3: news covers 1,000 nodes in ~7 hops of network delay; the ~e^-3 of nodes the
    epidemic misses get it from the next gossip round."""

    retransmit_mult: int = 4
    """lambda of SWIM section 4.1: each broadcast is sent mult * ceil(log10(N + 1)) times.
    Default 4 (memberlist LAN)."""

    push_pull_interval: float = 30.0
    """Anti-entropy with one random member (state hash first; digests only on a mismatch).
    Default 30 s (memberlist LAN); cheap because a converged pair exchanges only hashes."""

    join_check_after: float = 5.0
    """A node that has just joined compares its state with a random member this long after the
    join reply, besides its regular push-pull. Nodes that join at about the same moment (a
    fleet started at once) gossip each other's joins to members whose WireGuard does not have
    them yet, which drops the news; without this check those joins reached such a member only
    at its next push-pull, 15-45 s later (a 29-node start took 35 s to be whole). Default 5 s:
    a 30-node start on two cores has settled by then; the check is one datagram when the
    states agree."""

    reconnect_interval: float = 10.0
    """How often a node tries to re-join one recently dead member over the underlay (and its
    seeds when it knows no live member). This is what heals a partition: both halves declared
    each other dead. Default 10 s (Serf uses 30 s): bounded cost, one 1400-byte datagram."""

    merge_check_interval: float = 1.0
    """How often a node may check one seed address or old contact that is not a live member
    (meshd.core.lookout): one 96-byte datagram, answered by a smaller one; a join follows only
    when the answer comes from another mesh. Default 1 s: a mesh that formed apart from
    another merges within seconds of a path opening, while a converged mesh whose seeds are
    all members sends nothing (covered addresses are only rechecked every `covered_recheck`)."""

    seed_retry_max: float = 8.0
    """Longest wait between two checks of a seed address that does not answer, or answers from
    another mesh that will not merge (the wait doubles from `merge_check_interval`). Default
    8 s: a dead seed costs a node about 18 bytes/s; a seed that comes back is found within 8 s."""

    contact_retry_max: float = 300.0
    """Longest wait between two checks of an old contact (a member we forgot, or one persisted
    by an earlier run). They are retried for as long as the node runs, so a node alone for a day
    still finds its mesh. Default 5 min: at most `contact_limit` such contacts, a few bytes/s."""

    covered_recheck: float = 600.0
    """A seed or contact whose node is a live member is checked again this long after its last
    answer (someone else may have taken the address). Default 10 min: the only cost of looking
    across in a converged mesh, a small datagram per seed address every 10 minutes."""

    contact_limit: int = 64
    """Most contact addresses kept (the newest), besides the seeds."""

    tombstone_ttl: float = 3600.0
    """How long dead/left records are kept: they block stale gossip from resurrecting a node,
    and dead ones are reconnect candidates. Default 1 h: longer partitions need the seeds."""

    join_timeout: float = 1.0
    """Wait for a join reply before sending the request again. Default 1 s (underlay RTT is
    small; retries cover loss)."""

    join_attempts: int = 5
    """Join requests sent to each seed before giving up (the reconnect timer keeps trying)."""

    max_datagram: int = 1372
    """Largest overlay datagram: WireGuard MTU 1420 minus inner IPv6 and UDP headers."""

    queue_limit: int = 4096
    """Most broadcasts held; beyond it the most-sent ones are dropped (push-pull repairs)."""

    def __post_init__(self) -> None:
        if self.cycle_interval < self.probe_interval:
            raise ValueError(
                f"cycle_interval {self.cycle_interval} s is below probe_interval "
                f"{self.probe_interval} s: members would fall due faster than they are probed"
            )

    @classmethod
    def lan(cls) -> MembershipConfig:
        """Defaults for a LAN or a single data centre."""
        return cls()

    @classmethod
    def local(cls) -> MembershipConfig:
        """Fast preset for tests and simulations of small meshes: everything 5x quicker, except
        fan-outs; push-pull and reconnect much more often so partition tests stay short."""
        return dataclasses.replace(
            cls(),
            probe_interval=0.1,
            cycle_interval=0.15,
            probe_timeout=0.04,
            first_probe_after=0.2,
            degraded_recheck=0.4,
            join_check_after=1.0,
            gossip_interval=0.05,
            push_pull_interval=2.0,
            reconnect_interval=1.0,
            tombstone_ttl=15.0,
            merge_check_interval=0.2,
            seed_retry_max=1.6,
            contact_retry_max=3.2,
            covered_recheck=30.0,
            join_timeout=0.2,
            suspicion_min_floor=0.0,  # simulated nodes never stall
            claim_refute_window=1.0,
            claim_strike_window=12.0,
            claim_ignore_for=120.0,
        )

    def retransmit_limit(self, n: int) -> int:
        """Transmissions of one broadcast in a mesh of n nodes (memberlist `retransmitLimit`)."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def suspicion_bounds(self, n: int) -> tuple[float, float]:
        """(min, max) suspicion timeout for a mesh of n nodes (Lifeguard IV-B)."""
        lo = self.suspicion_mult * max(1.0, math.log10(max(1, n))) * self.probe_interval
        lo = max(lo, self.suspicion_min_floor)
        return lo, lo * self.suspicion_max_mult
