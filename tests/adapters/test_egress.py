"""Gateway roles (meshd.adapters.egress) without a namespace: what is forwarded, the ruleset
text (checked by `nft -c` where possible), and saving/restoring forwarding sysctls."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from meshd.adapters import egress
from meshd.adapters.egress import EgressGateway, GatewayRoles, render_ruleset
from meshd.core.wgplan import as_prefix

V6_EXIT = GatewayRoles("mesh0", (as_prefix("::/0"),), egress_nat=True)
NAT64 = GatewayRoles("mesh0", (as_prefix("64:ff9b::/96"),), nat64_prefix=as_prefix("64:ff9b::/96"))
SITE4 = GatewayRoles("mesh0", (as_prefix("10.20.0.0/16"),))
BRIDGE_ONLY = GatewayRoles("mesh0", bridges=("podman1",))
PROTECTING = GatewayRoles(
    "mesh0",
    (as_prefix("::/0"), as_prefix("0.0.0.0/0")),
    egress_nat=True,
    bridges=("podman1",),
    protected=(as_prefix("10.0.0.0/24"), as_prefix("fd00:1::/48")),
    nat64_prefix=as_prefix("64:ff9b::/96"),
)


@pytest.mark.parametrize(
    ("roles", "families"),
    [
        (GatewayRoles("mesh0"), []),
        (V6_EXIT, [6]),
        (SITE4, [4]),
        (NAT64, [4, 6]),  # tayga's IPv4 side leaves through the kernel
        (BRIDGE_ONLY, [4, 6]),
    ],
)
def test_forwarded_families(roles: GatewayRoles, families: list[int]) -> None:
    assert roles.forwarding_families() == families


def test_ruleset_of_a_site_gateway_only_replaces_the_table() -> None:
    # Routing a subnet needs forwarding, not NAT: the table is there (and empty) so that a
    # restart with fewer roles still removes an old ruleset.
    assert render_ruleset(SITE4) == (
        "table inet meshd\ndelete table inet meshd\ntable inet meshd {\n}\n"
    )


def test_ruleset_of_an_exit_is_egress_only() -> None:
    text = render_ruleset(V6_EXIT)
    assert "ct state established,related accept" in text
    assert 'oifname { "mesh0" } counter drop' in text
    assert 'iifname { "mesh0" } ct mark set 0x6d65' in text
    assert 'oifname != { "mesh0", "meshd-nat64" } ct mark 0x6d65 masquerade' in text
    assert "chain protect" not in text and "0x6d66" not in text


def test_bridge_traffic_is_masqueraded_into_the_mesh_too() -> None:
    text = render_ruleset(BRIDGE_ONLY)
    assert 'oifname { "podman1" } counter drop' in text
    assert 'iifname { "podman1" } ct mark set 0x6d66' in text
    assert 'oifname != "meshd-nat64" ct mark 0x6d66 masquerade' in text
    assert 'iifname { "mesh0" }' not in text  # no exit: mesh traffic is not NATed


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="nft -c needs root and nft"
)
@pytest.mark.parametrize("roles", [V6_EXIT, NAT64, SITE4, BRIDGE_ONLY, PROTECTING])
def test_every_ruleset_is_valid_nftables(roles: GatewayRoles) -> None:
    # -c: parse and check against the kernel, change nothing.
    r = subprocess.run(
        ["nft", "-c", "-f", "-"], input=render_ruleset(roles), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


@pytest.fixture
def sysctls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[int, Path]:
    files = {6: tmp_path / "ipv6_forwarding", 4: tmp_path / "ip_forward"}
    files[6].write_text("0\n")
    files[4].write_text("1\n")  # already on (e.g. `--sysctl` in a container)
    monkeypatch.setattr(egress, "FORWARDING", files)
    return files


def test_forwarding_is_saved_before_the_change_and_restored(
    tmp_path: Path, sysctls: dict[int, Path]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    gateway = EgressGateway(NAT64, state, "fd00::1")
    gateway._enable_forwarding()
    assert (sysctls[6].read_text(), sysctls[4].read_text()) == ("1", "1\n")  # 4 not written
    # A crash now, and a new run: the saved original wins over the current value.
    EgressGateway(NAT64, state, "fd00::1")._enable_forwarding()
    gateway._restore_forwarding()
    assert (sysctls[6].read_text(), sysctls[4].read_text()) == ("0", "1\n")
    assert not gateway.saved_sysctls.exists()


def test_the_ruleset_shown_in_the_docs_is_what_meshd_writes() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "egress.md").read_text()
    roles = GatewayRoles(
        "mesh0",
        (as_prefix("::/0"), as_prefix("64:ff9b::/96")),
        egress_nat=True,
        protected=(as_prefix("10.0.0.0/24"), as_prefix("2001:db8:ff::/48")),
        nat64_prefix=as_prefix("64:ff9b::/96"),
    )
    table = render_ruleset(roles).split("\n", 2)[2]  # without the replace idiom's two lines
    assert f"```\n{table}```" in doc
