"""The local API and its client over a real unix socket, against a fake daemon (FakeControl)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from meshd.api import ApiServer
from meshd.cli import format_status
from meshd.client import ApiError, MeshdClient, MeshdNotRunning
from meshd.core.errors import MeshError

STATUS = {
    "node": {
        "name": "a",
        "mesh": "prod",
        "overlay_addresses": ["fd00::a"],
        "interface": "mesh0",
        "backend": "userspace",
        "listen_port": 51820,
        "version": 7,
    },
    "connected": True,
    "warnings": ["certificate expires in 3 days"],
    "peers": [
        {
            "name": "b",
            "overlay_addresses": ["fd00::b"],
            "endpoint": "192.0.2.2:51820",
            "state": "alive",
            "handshake_age_s": 3.2,
            "rtt_ms": 0.42,
            "rx_bytes": 2048,
            "tx_bytes": 100,
        }
    ],
}


class FakeControl:
    def __init__(self) -> None:
        self.healthy = True
        self.left = False
        self.revocations: list[bytes] = []
        self.refreshes = 0

    async def refresh(self) -> None:
        self.refreshes += 1

    def status(self) -> dict[str, Any]:
        return STATUS

    def peers(self) -> list[dict[str, Any]]:
        return list(STATUS["peers"])  # type: ignore[call-overload]

    def health(self) -> tuple[bool, str]:
        return self.healthy, "1 of 1 peers reachable" if self.healthy else "no peer reachable"

    async def leave(self) -> dict[str, Any]:
        self.left = True
        return {"message": "left"}

    async def rotate(self) -> dict[str, Any]:
        raise MeshError("rotation already in progress")

    async def apply_revocation(self, record: bytes) -> dict[str, Any]:
        self.revocations.append(record)
        return {"message": "ok"}

    def metrics(self) -> str:
        return "meshd_peers 1\n"


@pytest.fixture
async def served(tmp_path: Path) -> Any:
    control = FakeControl()
    server = ApiServer(control, tmp_path / "run" / "meshd.sock")
    await server.start()
    try:
        yield control, MeshdClient(server.socket)
    finally:
        await server.stop()
    assert not server.socket.exists()


async def test_routes_round_trip(served: Any) -> None:
    control, client = served
    assert stat.S_IMODE(client.socket.stat().st_mode) == 0o660
    assert await client.status() == STATUS
    assert (await client.peers())[0]["name"] == "b"
    assert control.refreshes == 2  # handshake times and counters are read at the request
    assert await client.health() == {"healthy": True, "reason": "1 of 1 peers reachable"}
    control.healthy = False
    assert await client.health() == {"healthy": False, "reason": "no peer reachable"}
    assert await client.leave() == {"message": "left"}
    assert control.left
    await client.apply_revocation(b"\x01\x02")
    assert control.revocations == [b"\x01\x02"]
    assert await client.metrics() == "meshd_peers 1\n"
    assert control.refreshes == 3


async def test_daemon_errors_become_typed_errors(served: Any) -> None:
    _, client = served
    with pytest.raises(ApiError, match="rotation already in progress") as exc:
        await client.rotate()
    assert exc.value.status == 409
    with pytest.raises(ApiError) as exc:
        await client.request("POST", "/v0/revocations", {"record": "zz"})
    assert exc.value.status == 400


async def test_no_daemon_is_a_clear_error(tmp_path: Path) -> None:
    sock = tmp_path / "meshd.sock"
    with pytest.raises(MeshdNotRunning, match=f"meshd is not running at {sock}"):
        await MeshdClient(sock).status()
    sock.touch()  # a stale file where the socket was: still "not running"
    with pytest.raises(MeshdNotRunning):
        await MeshdClient(sock).status()


def test_status_table_reads_at_a_glance() -> None:
    text = format_status(STATUS)
    assert text.splitlines()[0] == "a  mesh prod  fd00::a"
    assert "warning: certificate expires in 3 days" in text
    header, row = text.splitlines()[-2:]
    assert header.split() == [
        "PEER",
        "OVERLAY",
        "ENDPOINT",
        "STATE",
        "HANDSHAKE",
        "RTT",
        "RX",
        "/",
        "TX",
    ]
    assert row.split() == [
        "b",
        "fd00::b",
        "192.0.2.2:51820",
        "alive",
        "3s",
        "ago",
        "0.4ms",
        "2.0",
        "KiB",
        "/",
        "100",
        "B",
    ]


def test_status_shows_gateway_routes_and_refusals() -> None:
    node = dict(STATUS["node"])  # type: ignore[call-overload]
    node["routes"] = {"::/0": {"gateway": "gw-a", "rtt_ms": 0.4}}
    node["routes_refused"] = {"10.0.0.0/8": "it covers underlay address 10.1.2.3"}
    lines = format_status({**STATUS, "node": node}).splitlines()
    assert "  route ::/0 via gw-a" in lines
    assert "  route 10.0.0.0/8 NOT routed: it covers underlay address 10.1.2.3" in lines
