"""Gateway route choice (meshd.core.routes): which prefixes are accepted and which member
carries each one."""

from __future__ import annotations

import ipaddress

import pytest

from meshd.core.routes import (
    SWITCH_HOLD_S,
    GatewayOffer,
    Held,
    Refused,
    RouteChoice,
    RoutePolicy,
    choose_gateways,
    parse_accept,
)
from meshd.core.wgplan import as_prefix

A, B, C = b"A" * 32, b"B" * 32, b"C" * 32
N64 = as_prefix("64:ff9b::/96")
SITE = as_prefix("10.20.0.0/16")
V6_DEFAULT, V4_DEFAULT = as_prefix("::/0"), as_prefix("0.0.0.0/0")


def offer(
    node: bytes, *prefixes: str, healthy: bool = True, rtt: float | None = None
) -> GatewayOffer:
    return GatewayOffer(node, tuple(as_prefix(p) for p in prefixes), healthy, rtt)


@pytest.mark.parametrize(
    ("accept", "use_exit", "own", "expected"),
    [
        # Nothing accepted by default: a client opts in.
        ([], False, [], {}),
        (["all"], False, [], {N64: A, SITE: A}),
        (["all"], True, [], {N64: A, SITE: A, V6_DEFAULT: A, V4_DEFAULT: A}),
        # A listed prefix accepts what lies inside it, not what is wider.
        (["10.0.0.0/8"], False, [], {SITE: A}),
        (["10.20.5.0/24"], False, [], {}),
        (["64:ff9b::/96"], True, [], {N64: A, V6_DEFAULT: A, V4_DEFAULT: A}),
        # Our own advertised prefixes are never routed to someone else.
        (["all"], True, ["::/0", "64:ff9b::/96"], {SITE: A, V4_DEFAULT: A}),
    ],
)
def test_policy_decides_which_prefixes_are_routed(
    accept: list[str], use_exit: bool, own: list[str], expected: dict[object, bytes]
) -> None:
    policy = RoutePolicy(parse_accept(accept), use_exit, tuple(as_prefix(p) for p in own))
    offers = [offer(A, "64:ff9b::/96", "10.20.0.0/16", "::/0", "0.0.0.0/0")]
    assert choose_gateways(offers, policy) == RouteChoice(expected)


ALL = RoutePolicy(None, use_exit=True)


@pytest.mark.parametrize(
    ("offers", "current", "expected"),
    [
        # Lowest RTT wins; unknown RTT counts as worst.
        ([offer(A, "::/0", rtt=0.010), offer(B, "::/0", rtt=0.003)], None, B),
        ([offer(A, "::/0", rtt=None), offer(B, "::/0", rtt=0.050)], None, B),
        # No RTT anywhere: lowest node ID, the same on every pass.
        ([offer(B, "::/0"), offer(A, "::/0")], None, A),
        # A healthy gateway beats a suspected one however fast that is.
        ([offer(A, "::/0", healthy=False, rtt=0.001), offer(B, "::/0", rtt=0.9)], A, B),
        # Stability: the current one stays while the other is not clearly better...
        ([offer(A, "::/0", rtt=0.010), offer(B, "::/0", rtt=0.009)], A, A),
        ([offer(A, "::/0", rtt=0.0015), offer(B, "::/0", rtt=0.0001)], A, A),  # within 2 ms
        ([offer(A, "::/0"), offer(B, "::/0")], B, B),
        # ...and moves when it is (lower by >20 % and >2 ms), or when it has an RTT at all.
        ([offer(A, "::/0", rtt=0.030), offer(B, "::/0", rtt=0.010)], A, B),
        ([offer(A, "::/0"), offer(B, "::/0", rtt=0.5)], A, B),
        # All suspected: keep the current one rather than hop between suspects.
        ([offer(A, "::/0", healthy=False), offer(B, "::/0", healthy=False, rtt=0.001)], A, A),
        # The current gateway no longer offers the prefix (it left or withdrew it).
        ([offer(B, "::/0", rtt=0.5)], A, B),
    ],
)
def test_one_gateway_per_prefix(
    offers: list[GatewayOffer], current: bytes | None, expected: bytes
) -> None:
    # The current gateway was chosen long enough ago for a move for speed to be allowed.
    held = {V6_DEFAULT: Held(current, 0.0)} if current else None
    choice = choose_gateways(offers, ALL, current=held, now=SWITCH_HOLD_S)
    assert choice == RouteChoice({V6_DEFAULT: expected})


def test_a_move_for_speed_waits_for_the_hold_time_a_failure_does_not() -> None:
    slow, fast = offer(A, "::/0", rtt=0.030), offer(B, "::/0", rtt=0.010)
    first = choose_gateways([slow, fast], ALL, current={V6_DEFAULT: Held(A, 100.0)}, now=100.0)
    assert first.gateways == {V6_DEFAULT: A} and first.held == {V6_DEFAULT: Held(A, 100.0)}
    soon = choose_gateways([slow, fast], ALL, current=first.held, now=100.0 + SWITCH_HOLD_S - 1)
    assert soon.gateways == {V6_DEFAULT: A}
    later = choose_gateways([slow, fast], ALL, current=soon.held, now=100.0 + SWITCH_HOLD_S)
    assert later.held == {V6_DEFAULT: Held(B, 100.0 + SWITCH_HOLD_S)}
    # B fails right after: traffic moves back at once.
    failed = offer(B, "::/0", healthy=False, rtt=0.010)
    back = choose_gateways([slow, failed], ALL, current=later.held, now=100.0 + SWITCH_HOLD_S + 1)
    assert back.gateways == {V6_DEFAULT: A}


def test_each_prefix_is_chosen_on_its_own() -> None:
    offers = [
        offer(A, "::/0", "64:ff9b::/96", rtt=0.020),
        offer(B, "::/0", rtt=0.001),
        offer(C, "10.20.0.0/16", rtt=0.050),
    ]
    assert choose_gateways(offers, ALL).gateways == {V6_DEFAULT: B, N64: A, SITE: C}


def test_a_prefix_covering_an_underlay_address_is_refused_but_a_default_route_is_not() -> None:
    # 10.20.0.0/16 holds a peer's WireGuard endpoint: routing it into the mesh would send the
    # tunnel's own packets into the tunnel. /0 is handled by policy routing (fwmark) instead.
    underlay = [ipaddress.ip_address("10.20.3.4"), ipaddress.ip_address("fd9a::1")]
    offers = [offer(A, "10.20.0.0/16", "10.30.0.0/16", "::/0")]
    choice = choose_gateways(offers, ALL, underlay)
    assert choice == RouteChoice(
        {as_prefix("10.30.0.0/16"): A, V6_DEFAULT: A},
        (Refused(SITE, "it covers underlay address 10.20.3.4"),),
    )
