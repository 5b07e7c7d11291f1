"""Keys that rotate themselves, on real meshd processes and wireguard-go: 200 pings at 10 ms
lose nothing across a pair-PSK epoch change, a WireGuard key rotation of one side, and a roll to
a new mesh PSK secret; a node without the mesh PSK secret is refused with a clear reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd import keyfiles
from meshd.core.psk import PskSecrets
from meshd.keylab import (
    across_psk_epoch,
    across_psk_secret_change,
    across_wg_rotation,
    give_psk,
)
from meshd.lab import Lab, wait_for
from meshd.meshlab import MeshdNode, MeshLab

pytestmark = pytest.mark.netns

EPOCH_S = 10  # the shortest allowed; the default is a day


@pytest.fixture
async def psk_mesh(
    run_prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[MeshLab, MeshdNode, MeshdNode]]:
    async with Lab(f"{run_prefix[:6]}ky", hosts=3) as lab:
        mesh = MeshLab(lab, tmp_path)
        a, b = mesh.add_node(0, seeds=[]), mesh.add_node(1, seeds=[0])
        give_psk(mesh, [a, b], period=EPOCH_S)
        await mesh.start_mesh([a, b], within=30)
        yield mesh, a, b


async def test_no_loss_across_psk_epoch_wireguard_key_and_psk_secret_changes(
    psk_mesh: tuple[MeshLab, MeshdNode, MeshdNode],
) -> None:
    mesh, a, b = psk_mesh

    # Epoch change: both sides move to the next epoch's PSK with no message and no loss, and
    # the file on disk is ratcheted (it no longer holds the earlier epoch's chain key).
    file_before = PskSecrets.from_text((a.directory / "psk.secret").read_text(), "a")
    series, seen = await across_psk_epoch(a, b)
    assert (series.lost, series.sent) == (0, 200)
    assert seen["before"][0] is not None and seen["before"][0] == seen["before"][1]

    def file_now() -> PskSecrets:
        return PskSecrets.from_text((a.directory / "psk.secret").read_text(), "a")

    async def ratcheted() -> bool:  # written by the key loop at the boundary, not with the PSK
        return file_now().chains[0].epoch > file_before.chains[0].epoch

    await wait_for(ratcheted, 5, "the PSK file to be ratcheted to the new epoch")
    assert file_now().ids == file_before.ids

    # WireGuard key rotation of b: announced ahead, switched at the announced time; a replaces
    # the key and the new session's handshake (which uses the pair PSK) succeeds.
    series, seen = await across_wg_rotation(a, b)
    assert (series.lost, series.sent) == (0, 200)
    status = await b.status()
    assert status is not None and status["node"]["wg_public_key"] == seen["new"]
    assert status["node"]["wg_next_key"] is None
    assert (b.directory / "state" / "wireguard.next").exists() is False

    # Mesh PSK secret roll: the new secret is handed to both nodes (SIGHUP) ahead of its
    # activation; at activation both switch together; the superseded secret is then dropped.
    series, seen = await across_psk_secret_change(mesh, [a, b], a, b)
    assert (series.lost, series.sent) == (0, 200)

    async def old_secret_dropped() -> bool:
        text = (a.directory / "psk.secret").read_text()
        return PskSecrets.from_text(text, "a").ids == (bytes.fromhex(seen["secret_id"]),)

    await wait_for(old_secret_dropped, 10, "the superseded secret to leave the file")
    await mesh.wait_full_mesh([a, b], within=10)


async def test_a_node_without_the_mesh_psk_is_refused_with_a_reason(
    psk_mesh: tuple[MeshLab, MeshdNode, MeshdNode],
) -> None:
    mesh, a, _ = psk_mesh
    c = mesh.add_node(2, seeds=[0])  # no psk_file
    await mesh.start(c)
    await mesh.wait_api(c)

    async def both_sides_say_why() -> bool:
        sa, sc = await a.status(), await c.status()
        return (
            sa is not None
            and sc is not None
            and any("refusing peer node2" in w and "no mesh PSK" in w for w in sa["warnings"])
            and any("refusing peer node0" in w and "psk_file" in w for w in sc["warnings"])
        )

    await wait_for(both_sides_say_why, 15, "the PSK mismatch in both nodes' warnings")
    sa = await a.status()
    assert sa is not None and [p["name"] for p in sa["peers"]] == ["node1"]
    assert "refusing peer node2: 'node2' uses no mesh PSK secret" in a.log_path.read_text()
    assert not await c.host.ping(a.overlay_v6, within=1)


async def test_a_rotation_survives_a_restart_before_the_switch(
    run_prefix: str, tmp_path: Path
) -> None:
    async with Lab(f"{run_prefix[:6]}kr", hosts=2) as lab:
        mesh = MeshLab(lab, tmp_path)
        a, b = mesh.add_node(0, seeds=[]), mesh.add_node(1, seeds=[0])
        await mesh.start_mesh([a, b], within=30)
        answer = await b.client.rotate()
        assert await mesh.stop(b) == 0
        await mesh.start(b)
        await mesh.wait_api(b)
        status = await b.status()
        assert status is not None
        assert (status["node"]["wg_next_key"], status["node"]["wg_next_key_at"]) == (
            answer["next_key"],
            answer["switch_at"],
        )

        async def switched_everywhere() -> bool:
            sb = await b.status()
            keys = {keyfiles.encode_key(k).decode().strip() for k in await a.wireguard_peers()}
            return sb is not None and sb["node"]["wg_public_key"] == answer["next_key"] == (
                next(iter(keys), None)
            )

        await wait_for(switched_everywhere, 30, "the persisted rotation to happen on both sides")
        assert await a.host.ping(b.overlay_v6, within=5)
