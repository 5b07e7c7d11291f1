"""The kernel cap on meshd's underlay port (meshd.adapters.underlayguard), in a real network
namespace with real nftables: installed, leaves the mesh interface alone, removed on stop."""

from __future__ import annotations

import asyncio
import subprocess

from meshd.adapters.underlayguard import UnderlayGuard, render_ruleset


def test_ruleset_caps_the_port_and_lets_the_mesh_interface_through() -> None:
    text = render_ruleset("mesh0", 51821, rate=3000)
    assert text.splitlines()[:2] == [
        "table inet meshd_guard_mesh0",
        "delete table inet meshd_guard_mesh0",
    ]
    assert '    iifname "mesh0" accept' in text
    assert "    udp dport 51821 limit rate over 3000/second burst 3000 packets counter drop" in text


def _tables(netns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "tables"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_installed_and_removed_in_a_namespace(netns: str) -> None:
    guard = UnderlayGuard("mesh0", 51821, netns=netns)
    asyncio.run(guard.start())
    assert guard.installed
    assert "table inet meshd_guard_mesh0" in _tables(netns)
    asyncio.run(guard.start())  # replaced atomically, not doubled
    assert _tables(netns).count("meshd_guard_mesh0") == 1
    asyncio.run(guard.stop())
    assert "meshd_guard" not in _tables(netns)
