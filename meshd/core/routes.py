"""Which member carries each advertised prefix: the client side of gateway routes.

Theory of operation
-------------------
Members advertise prefixes their certificate grants (site subnets, a NAT64 prefix such as
64:ff9b::/96, ::/0 and 0.0.0.0/0 for an exit). A node routes a prefix into the mesh only when
its own policy accepts it (`RoutePolicy`: the configured `accept_routes`, `use_exit` for default
routes) and, for each accepted prefix, through exactly one gateway: WireGuard moves a prefix to
the last peer it was given to, so two peers must never hold the same AllowedIP.

Choosing the gateway (`choose_gateways`), per prefix, among members advertising exactly it:

1. healthy (ALIVE) before SUSPECT: a suspected gateway is left as soon as suspicion starts,
   so traffic moves within the failure-detection time, not after the dead timeout;
2. among equals, the lowest smoothed probe RTT (unknown RTT counts as worst);
3. stability: the current gateway is kept while it is healthy and no other one is clearly
   better (`SWITCH_RATIO` and `SWITCH_MARGIN_S`), and for at least `SWITCH_HOLD_S` after it was
   chosen, so two equal gateways do not take turns as their RTT estimates jitter (on a loaded
   host a smoothed RTT swings by several milliseconds); ties are broken by node ID, the same
   on every pass. A failure (SUSPECT) moves traffic at once, hold or not; so does the first
   RTT of a gateway chosen before any was known.

Loops: a node must never send its own underlay traffic (WireGuard and meshd's join packets) into
the mesh. Default routes (/0) are kept in a separate routing table behind policy rules and
WireGuard's packets carry a firewall mark that skips that table (the adapter's business, see
docs/egress.md). Every other prefix is an ordinary route in the main table, so a prefix that
covers an underlay address in use (ours, a peer endpoint, a seed) would capture WireGuard's own
packets: such a prefix is refused (`Refused`) rather than routed.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshd.core.wgplan import Prefix, as_prefix

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SWITCH_RATIO = 0.8
"""Another gateway must have an RTT below this fraction of the current one's..."""
SWITCH_MARGIN_S = 0.002
"""...and be faster by at least this many seconds, before traffic moves to it: below that the
difference is probe jitter, and moving costs a burst of reordering..."""
SWITCH_HOLD_S = 30.0
"""...and the current gateway must have carried the prefix this long: at most one move for
speed per prefix per hold time (moves break NATed connections)."""


@dataclass(frozen=True)
class GatewayOffer:
    """One live member and what it advertises."""

    node_id: bytes
    """The member's identity key (stable tie-breaker)."""
    prefixes: tuple[Prefix, ...]
    """Prefixes it advertises now (already checked against its certificate)."""
    healthy: bool = True
    """ALIVE (True) or SUSPECT (False)."""
    rtt: float | None = None
    """Smoothed direct-probe round trip in seconds, None while unknown."""


@dataclass(frozen=True)
class RoutePolicy:
    """What this node accepts from gateways."""

    accept: tuple[Prefix, ...] | None = ()
    """Prefixes accepted, with everything inside them; None accepts every non-default prefix."""
    use_exit: bool = False
    """Route default traffic (::/0, 0.0.0.0/0) through an exit gateway."""
    own: tuple[Prefix, ...] = ()
    """Prefixes this node advertises itself: it is their gateway, never a client."""

    def accepts(self, prefix: Prefix) -> bool:
        if any(prefix == p for p in self.own):
            return False
        if prefix.prefixlen == 0:
            return self.use_exit
        if self.accept is None:
            return True
        return any(prefix.version == a.version and prefix.subnet_of(a) for a in self.accept)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Refused:
    """An accepted prefix that is not routed, and why (shown in logs and status)."""

    prefix: Prefix
    reason: str


@dataclass(frozen=True)
class Held:
    """The gateway a prefix is routed through, and since when."""

    node_id: bytes
    since: float
    """`now` of the choice that picked it."""


@dataclass(frozen=True)
class RouteChoice:
    gateways: dict[Prefix, bytes]
    """Accepted prefix -> node ID of the gateway it is routed through."""
    refused: tuple[Refused, ...] = ()
    held: dict[Prefix, Held] = field(default_factory=dict, compare=False)
    """The same choice with the time each gateway was chosen: the next call's `current`."""


def parse_accept(values: Iterable[str]) -> tuple[Prefix, ...] | None:
    """`accept_routes` as configured: ["all"] (None: everything) or a list of prefixes."""
    values = list(values)
    if values == ["all"]:
        return None
    return tuple(as_prefix(v) for v in values)


def _covers_underlay(prefix: Prefix, underlay: Iterable[IPAddress]) -> IPAddress | None:
    for addr in underlay:
        if addr.version == prefix.version and addr in prefix:
            return addr
    return None


def choose_gateways(
    offers: Iterable[GatewayOffer],
    policy: RoutePolicy,
    underlay: Iterable[IPAddress] = (),
    current: Mapping[Prefix, Held] | None = None,
    now: float = 0.0,
) -> RouteChoice:
    """One gateway per accepted prefix (see the module docstring). `underlay` lists the
    addresses WireGuard and meshd talk to or from outside the tunnel; `current` is the previous
    choice (`RouteChoice.held`), for stability."""
    current = current or {}
    underlay = list(underlay)
    by_prefix: dict[Prefix, list[GatewayOffer]] = {}
    for offer in offers:
        for prefix in offer.prefixes:
            if policy.accepts(prefix):
                by_prefix.setdefault(prefix, []).append(offer)
    gateways: dict[Prefix, bytes] = {}
    held: dict[Prefix, Held] = {}
    refused: list[Refused] = []
    for prefix, candidates in sorted(by_prefix.items(), key=lambda kv: _key(kv[0])):
        if prefix.prefixlen:
            hit = _covers_underlay(prefix, underlay)
            if hit is not None:
                refused.append(Refused(prefix, f"it covers underlay address {hit}"))
                continue
        before = current.get(prefix)
        gateways[prefix] = _pick(candidates, before, now)
        keep = before is not None and before.node_id == gateways[prefix]
        held[prefix] = before if keep and before is not None else Held(gateways[prefix], now)
    return RouteChoice(gateways, tuple(refused), held)


def _key(prefix: Prefix) -> tuple[int, int, int]:
    return (prefix.version, int(prefix.network_address), prefix.prefixlen)


def _rank(offer: GatewayOffer) -> tuple[bool, bool, float, bytes]:
    return (not offer.healthy, offer.rtt is None, offer.rtt or 0.0, offer.node_id)


def _pick(candidates: list[GatewayOffer], current: Held | None, now: float) -> bytes:
    best = min(candidates, key=_rank)
    held = next((c for c in candidates if current and c.node_id == current.node_id), None)
    if held is None or held.healthy != best.healthy:
        return best.node_id  # nothing to keep, or a healthy gateway beats a suspected one
    if not held.healthy:
        return held.node_id  # all suspected: hopping between them helps nothing
    if held.rtt is None:
        return best.node_id if best.rtt is not None else held.node_id
    assert best.rtt is not None and current is not None  # best ranks before held (RTT known)
    if now - current.since < SWITCH_HOLD_S:
        return held.node_id
    clearly_better = best.rtt < held.rtt * SWITCH_RATIO and held.rtt - best.rtt > SWITCH_MARGIN_S
    return best.node_id if clearly_better else held.node_id
