"""SIGHUP re-reads the certificate: a renewed one is taken and announced without a restart, a
lost peer or a lost packet; a broken file is refused and the old certificate stays in use."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from meshd import keyfiles
from meshd.keylab import LEAD_S, ping_series
from meshd.lab import Lab, wait_for
from meshd.meshlab import MeshLab

pytestmark = pytest.mark.netns


async def test_sighup_takes_a_renewed_certificate_and_refuses_a_broken_one(
    run_prefix: str, tmp_path: Path
) -> None:
    async with Lab(f"{run_prefix[:6]}hu", hosts=2) as lab:
        mesh = MeshLab(lab, tmp_path)
        a, b = mesh.add_node(0, seeds=[]), mesh.add_node(1, seeds=[0])
        await mesh.start_mesh([a, b], within=30)
        assert a.proc is not None
        before = await a.status()
        assert before is not None

        # Renewal: same identity key, new serial, later expiry.
        now = int(time.time())
        renewed = mesh.ca.issue(
            name=a.name,
            identity_key=a.cert.identity_key,
            ipv4=None,
            ipv4_pool="100.64.0.0/16",
            prefixes=[],
            roles=[],
            not_before=now - 60,
            not_after=now + 90 * 86400,
        )
        cert_path = a.directory / "node.cert"
        keyfiles.write_public(cert_path, keyfiles.armor(keyfiles.CERT_LABEL, renewed.raw))
        # 200 pings at 10 ms from b to a, with the reload inside the series.
        pings = asyncio.create_task(ping_series(b, a.overlay_v6))
        await asyncio.sleep(LEAD_S)
        a.proc.send_signal(signal.SIGHUP)

        async def serial_is(serial: int) -> bool:
            status = await a.status()
            return status is not None and status["node"]["certificate_serial"] == serial

        await wait_for(lambda: serial_is(renewed.serial), 10, "the renewed certificate in use")
        series = await pings
        assert series.lost == 0, series
        after = await a.status()
        assert after is not None and after["node"]["version"] > before["node"]["version"]
        await mesh.wait_full_mesh([a, b], within=10)

        # A damaged file is refused; the renewed certificate stays.
        cert_path.write_text(
            "-----BEGIN MESHD CERTIFICATE-----\nAAAA\n-----END MESHD CERTIFICATE-----\n"
        )
        a.proc.send_signal(signal.SIGHUP)

        async def refused_in_log() -> bool:
            return "reload refused, keeping the current certificate" in a.log_path.read_text()

        await wait_for(refused_in_log, 10, "the broken certificate to be refused")
        assert await serial_is(renewed.serial)
        assert a.running
