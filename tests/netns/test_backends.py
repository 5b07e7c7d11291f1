"""Backend selection: kernel when the module exists, else wireguard-go; clear errors otherwise."""

from __future__ import annotations

import ipaddress
import os

import pytest

from meshd.adapters.wireguard import (
    BackendUnavailable,
    KernelBackend,
    UserspaceBackend,
    WireGuardError,
    select_backend,
)
from meshd.core.identity import WireGuardKey
from meshd.core.wgplan import WgDevice, WgPeer, plan_device
from meshd.lab import Lab

pytestmark = pytest.mark.netns


async def test_auto_picks_what_this_machine_has(lab3: Lab) -> None:
    ns = lab3[0].netns
    backend = await select_backend("auto", netns=ns, socket_dir=lab3[0].wg_dir)
    if await KernelBackend.available(ns):
        assert backend.kind == "kernel"
    else:
        assert backend.kind == "userspace"
        with pytest.raises(BackendUnavailable, match="wireguard module is not available"):
            await select_backend("kernel", netns=ns)
    await backend.close()


async def test_missing_wireguard_go_names_the_package() -> None:
    with pytest.raises(BackendUnavailable) as err:
        UserspaceBackend(binary="wireguard-go-not-installed")
    assert str(err.value) == (
        "starting userspace WireGuard: 'wireguard-go-not-installed' not found; install the "
        "Debian package wireguard-go (apt-get install wireguard-go)"
    )


async def test_kernel_backend_round_trip(lab3: Lab) -> None:
    ns = lab3[0].netns
    if not await KernelBackend.available(ns):
        pytest.skip("no WireGuard kernel module on this machine (PLATFORM.md): userspace only")
    backend = KernelBackend(ns)
    await backend.create("wgk0")
    want = WgDevice(WireGuardKey(bytes(range(32))).private, 51999)
    await backend.apply("wgk0", plan_device(want, None))
    status = await backend.read("wgk0")
    assert status is not None and status.device == want
    await backend.destroy("wgk0")
    assert await backend.read("wgk0") is None


async def test_userspace_backend_reads_none_until_created_and_after_destroy(lab3: Lab) -> None:
    backend = lab3[1].userspace_backend()
    assert await backend.read("mesh0") is None
    await backend.create("mesh0")
    await backend.create("mesh0")  # idempotent: same process
    pid = backend.pid("mesh0")
    want = WgDevice(WireGuardKey(bytes(range(32))).private, 51999)
    await backend.apply("mesh0", plan_device(want, None))
    status = await backend.read("mesh0")
    assert status is not None and status.device == want and backend.pid("mesh0") == pid
    await backend.destroy("mesh0")
    assert await backend.read("mesh0") is None
    assert not (lab3[1].wg_dir / "mesh0.sock").exists()


async def test_userspace_backend_round_trips_1200_peers(lab3: Lab) -> None:
    # A `get` of 1,200 peers is ~500 KiB: far beyond asyncio's default 64 KiB stream limit.
    backend = lab3[0].userspace_backend()
    await backend.create("mesh0")
    peers = tuple(
        WgPeer(
            os.urandom(32),
            (f"2001:db8::{i + 1:x}", 1024 + i) if i % 2 else (f"192.0.2.{i % 250 + 1}", 51820),
            (ipaddress.ip_network(f"fd78::{i + 1:x}/128"),),
            os.urandom(32) if i % 3 else None,
            25 if i % 5 else 0,
        )
        for i in range(1200)
    )
    want = WgDevice(os.urandom(32), 51820, peers)
    await backend.apply("mesh0", plan_device(want, None))
    status = await backend.read("mesh0")
    assert status is not None and status.device == want
    assert plan_device(want, status.device) == []


async def test_apply_error_names_verb_and_interface_but_no_key(lab3: Lab) -> None:
    backend = lab3[0].userspace_backend()
    await backend.create("mesh0")
    await backend.create("mesh1")
    key = os.urandom(32)
    await backend.apply("mesh0", plan_device(WgDevice(os.urandom(32), 51820), None))
    with pytest.raises(WireGuardError) as err:
        await backend.apply("mesh1", plan_device(WgDevice(key, 51820), None))
    assert str(err.value) == (
        "setting private key and listen port on mesh1: UAPI errno=98 (Address already in use)"
    )
    assert key.hex() not in str(err.value)
    # After the error the client reconnects: the next request works.
    status = await backend.read("mesh1")
    assert status is not None


async def test_wireguard_go_runs_in_our_session_but_its_own_process_group(lab3: Lab) -> None:
    # Own process group: a Ctrl-C meant for meshd does not stop the tunnel first. Our session:
    # a session of its own gave it a CPU autogroup of its own (20 % less throughput, D17).
    backend = lab3[0].userspace_backend()
    await backend.create("wgs9")
    try:
        pid = backend._procs["wgs9"].pid
        assert os.getsid(pid) == os.getsid(0)
        assert os.getpgid(pid) == pid != os.getpgid(0)
    finally:
        await backend.destroy("wgs9")
