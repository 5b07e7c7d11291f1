import ipaddress

import pytest

from meshd.core.endpoints import (
    MOVE_GRACE_S,
    RESTART_HANDSHAKE_AFTER_S,
    EndpointChoice,
    endpoint_refusal,
    handshake_restart_in,
    preferred_order,
)

E1, E2, NAT = ("192.0.2.1", 51820), ("2001:db8::1", 51820), ("198.51.100.7", 40000)


def test_first_announced_endpoint_is_used_at_once() -> None:
    c = EndpointChoice()
    assert c.update((E1, E2), None, None, now=0) == E1


def test_fresh_handshake_leaves_the_roamed_endpoint_to_wireguard() -> None:
    c = EndpointChoice()
    c.update((E1, E2), None, None, now=0)
    # None: the plan leaves WireGuard's endpoint alone (it may roam again any moment).
    assert c.update((E1, E2), 5.0, NAT, now=30) is None and c.current == NAT
    assert c.update((E1, E2), 100.0, NAT, now=200) is None and c.current == NAT


def test_stale_handshake_walks_the_announced_list() -> None:
    c = EndpointChoice()
    c.update((E1, E2), None, None, now=0)
    assert c.update((E1, E2), None, E1, now=5) == E1  # not yet: give E1 its retries
    assert c.update((E1, E2), None, E1, now=10) == E2
    assert c.update((E1, E2), None, E2, now=15) == E2
    assert c.update((E1, E2), None, E2, now=20) == E1  # wraps around
    assert c.update((E1, E2), 300.0, NAT, now=21) == E1  # stale handshake: NAT not trusted


def test_a_peer_that_moved_gets_its_new_endpoint_unless_wireguard_roams_first() -> None:
    c = EndpointChoice()
    c.update((E1,), 1.0, E1, now=0)
    # The peer moved away from E1, where WireGuard still sends: its packet that told us is
    # about to roam WireGuard, so the new address waits out the grace ...
    assert c.update((E2,), 1.0, E1, now=1) is None and c.switch_at == 1 + MOVE_GRACE_S
    assert c.update((E2,), 1.0, E1, now=1 + MOVE_GRACE_S / 2) is None
    # ... and is set when WireGuard did not roam (that packet was lost).
    assert c.update((E2,), 1.0, E1, now=1 + MOVE_GRACE_S) == E2 and c.switch_at is None
    assert c.update((E2,), 1.0, E2, now=2 + MOVE_GRACE_S) is None  # working: left alone


def test_a_roam_during_the_grace_is_kept_it_may_be_a_nat_the_peer_moved_behind() -> None:
    c = EndpointChoice()
    c.update((E1,), 1.0, E1, now=0)
    assert c.update((E2,), 1.0, E1, now=1) is None
    # The peer's packet came through a NAT: WireGuard roamed to the NAT's address, which the
    # peer cannot announce (E2 is private). Setting E2 would cut the pair.
    assert c.update((E2,), 1.0, NAT, now=1.1) is None and c.current == NAT
    assert c.update((E2,), 1.0, NAT, now=1 + MOVE_GRACE_S) is None and c.switch_at is None


def test_our_own_new_order_of_the_peers_endpoints_applies_at_once() -> None:
    c = EndpointChoice()
    c.update((E1, E2), 1.0, E1, now=0)
    # We moved (a link we shared with the peer is gone): its other endpoint comes first now.
    assert c.update((E2, E1), 1.0, E1, now=1) == E2
    # Without a session there is nothing to roam: the new address at once.
    c = EndpointChoice()
    c.update((E1,), None, None, now=0)
    assert c.update((E2,), None, E1, now=1) == E2


def test_an_endpoint_the_peer_never_announced_survives_its_new_announcement() -> None:
    c = EndpointChoice()
    c.update((E1,), None, None, now=0)
    assert c.update((E1,), 1.0, NAT, now=1) is None  # roamed: the peer is behind a NAT
    # It moves to another private network behind the same NAT: what it announces cannot be
    # reached, the NAT still can.
    assert c.update((E2,), 1.0, NAT, now=2) is None and c.current == NAT
    # Without a fresh handshake the roamed address proves nothing.
    c = EndpointChoice()
    c.update((E1,), 1.0, NAT, now=0)
    assert c.update((E2,), 300.0, NAT, now=1) == E2


def test_only_the_smaller_key_restarts_a_first_handshake_that_went_unanswered() -> None:
    small, large = bytes(32), b"\xff" * 32
    after = RESTART_HANDSHAKE_AFTER_S
    # Not in WireGuard yet: look again in a while; given to it just now: once the wait is over.
    assert handshake_restart_in(small, large, None, None) == after
    assert handshake_restart_in(small, large, 0.25, None) == after - 0.25
    assert handshake_restart_in(small, large, after, None) == 0.0
    assert handshake_restart_in(small, large, after + 7, None) == 0.0
    # A handshake happened (however old): never.
    assert handshake_restart_in(small, large, after + 7, 3.0) is None
    # The larger key never does: its initiations would cross the smaller key's.
    assert handshake_restart_in(large, small, after + 7, None) is None


def test_endpoints_on_a_shared_link_come_first_ipv4_before_ipv6() -> None:
    lan6, lan4 = ("fd9a:1::2", 51820), ("10.1.0.2", 51820)
    far6, far4 = ("2001:db8:9::2", 51820), ("203.0.113.2", 51820)
    announced = (far6, lan6, far4, lan4)
    on_lan = (ipaddress.ip_network("fd9a:1::/64"), ipaddress.ip_network("10.1.0.0/24"))
    assert preferred_order(announced, on_lan) == (lan4, lan6, far6, far4)
    # Nothing shared: the peer's own order (IPv6 first).
    assert preferred_order(announced, ()) == announced
    # A name (a static peer's endpoint) is never on a link.
    assert preferred_order((("seed.example", 1), lan4), on_lan) == (lan4, ("seed.example", 1))


# Canonical text of an IPv4-mapped address differs between Python versions (3.13 prints the
# dotted form): take whatever this one calls canonical.
MAPPED = str(ipaddress.ip_address("::ffff:192.0.2.1"))


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("192.0.2.1", None),
        ("10.1.2.3", None),
        ("2001:db8::1", None),
        ("fd12:3456::1", None),
        ("::%x]:1\nremove=true\nendpoint=[::1", "has a zone ID"),  # issue #22, finding 2
        ("fe80::1%eth0", "has a zone ID"),
        ("2001:DB8::1", "is not in canonical form"),
        ("2001:db8:0::1", "is not in canonical form"),
        ("[2001:db8::1]", "is not an IP address"),
        ("host.example", "is not an IP address"),
        ("0.0.0.0", "is unspecified"),
        ("::", "is unspecified"),
        ("127.0.0.1", "is loopback"),
        ("127.1.2.3", "is loopback"),
        ("::1", "is loopback"),
        ("224.0.0.1", "is multicast"),
        ("ff02::1", "is multicast"),
        ("169.254.1.1", "is link-local"),
        ("fe80::1", "is link-local"),
        ("255.255.255.255", "is reserved or broadcast"),
        ("240.0.0.1", "is reserved or broadcast"),
        ("0.1.2.3", "is in 0.0.0.0/8"),
        (MAPPED, "is an IPv4-mapped, IPv4-compatible or reserved IPv6 address"),
    ],
)
def test_endpoint_refusal_by_family_and_class(host: str, why: str | None) -> None:
    assert endpoint_refusal(host) == why
