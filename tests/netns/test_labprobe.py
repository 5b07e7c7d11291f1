"""EchoProbe: in-process ICMPv6 echo from a lab namespace (used by the benchmarks)."""

from __future__ import annotations

import ipaddress

import pytest

from meshd.lab import Lab
from meshd.labprobe import EchoProbe

pytestmark = pytest.mark.netns


async def test_reply_route_and_no_route_are_told_apart(lab3: Lab) -> None:
    h0, h1 = lab3[0], lab3[1]
    answered = await EchoProbe(h0.netns, str(h1.underlay_v6.ip)).run(within=5.0)
    assert answered.route_at is not None and answered.reply_at is not None
    assert answered.reply_at >= answered.route_at

    # On the underlay /64 but nobody has it: a route, no reply.
    silent = ipaddress.IPv6Address(int(h1.underlay_v6.ip) + 100)
    routed = await EchoProbe(h0.netns, str(silent)).run(within=0.3)
    assert routed.route_at is not None and routed.reply_at is None

    # Outside every prefix the namespace has: no route at all.
    nowhere = await EchoProbe(h0.netns, "fd00:dead::1").run(within=0.3)
    assert nowhere.route_at is None and nowhere.reply_at is None
