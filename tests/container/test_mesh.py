"""Three meshd containers on a podman network form a mesh through the image's entrypoint (node
files mounted at /etc/meshd, seeds by container IP), ping each other over the IPv6 overlay, pass
their HEALTHCHECK, and a `podman stop` is a graceful leave the others see. A sidecar sharing one
container's network namespace reaches a peer's overlay address."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.container.conftest import MESHD_RUN_ARGS, Images, Podman, issue_node_files, wait_until

pytestmark = pytest.mark.container

MESH = "ctmesh"
NAMES = ["alpha", "bravo", "charlie"]


async def status(podman: Podman, container: str) -> dict[str, Any] | None:
    out = await podman("exec", container, "meshctl", "status", "--json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def overlay_v6(st: dict[str, Any]) -> str:
    for a in st["node"]["overlay_addresses"]:
        iface = ipaddress.ip_interface(a)
        if iface.version == 6:
            return str(iface.ip)
    raise AssertionError(f"no IPv6 overlay address in {st['node']}")


async def test_three_containers_mesh_ping_health_sidecar_and_graceful_stop(
    podman: Podman, images: Images, tmp_path: Path
) -> None:
    files = issue_node_files(tmp_path, MESH, NAMES)
    net = await podman.network("net")
    containers: dict[str, str] = {}

    async def start(name: str, seeds: list[str]) -> None:
        containers[name] = await podman.run(
            name,
            images.meshd,
            run_args=(
                *MESHD_RUN_ARGS,
                "--network", net,
                "-v", f"{files[name]}:/etc/meshd:ro",
                "-e", f"MESHD_MESH={MESH}",
                "-e", f"MESHD_SEEDS={','.join(seeds)}",
                # podman's default stop timeout is 10 s; meshd needs well under one.
                "--stop-timeout", "10",
            ),
        )  # fmt: skip

    await start("alpha", [])
    seed = await podman.ip(containers["alpha"], net)
    await asyncio.gather(*(start(n, [f"{seed}:51821"]) for n in NAMES[1:]))

    async def full_mesh() -> bool:
        for name in NAMES:
            st = await status(podman, containers[name])
            if st is None:
                return False
            alive = {
                p["name"]
                for p in st["peers"]
                if p["state"] == "alive" and p["handshake_age_s"] is not None
            }
            if alive != set(NAMES) - {name}:
                return False
        return True

    try:
        took = await wait_until(full_mesh, 60, "every container to see the two others alive")
    except TimeoutError:
        for c in containers.values():
            print(f"--- {c}\n{await podman.logs(c)}")
        raise
    print(f"full mesh of three containers after {took:.1f} s")

    statuses = {n: await status(podman, containers[n]) for n in NAMES}
    v6 = {n: overlay_v6(st) for n, st in statuses.items() if st is not None}
    assert sorted(v6) == sorted(NAMES)

    # Every ordered pair pings over the overlay (WireGuard inside the containers).
    for a in NAMES:
        for b in NAMES:
            if a != b:
                await podman("exec", containers[a], "ping", "-6", "-c", "1", "-W", "2", v6[b])

    # The image's HEALTHCHECK (meshctl health --quiet) passes on every node.
    for name in NAMES:
        health = await podman("healthcheck", "run", containers[name], check=False)
        assert health.returncode == 0, (name, health.stdout, health.stderr)

    # Sidecar: a plain container (no capabilities, no tun) in alpha's network namespace uses
    # alpha's mesh0 to reach bravo's overlay address.
    podman.containers.append(f"{podman.prefix}-sidecar")
    sidecar = await podman(
        "run", "--rm", "--pull=never", "--name", f"{podman.prefix}-sidecar",
        "--network", f"container:{containers['alpha']}",
        "--entrypoint", "ping", images.meshd, "-6", "-c", "1", "-W", "2", v6["bravo"],
    )  # fmt: skip
    assert "1 received" in sidecar.stdout

    # `podman stop`: SIGTERM to meshd as PID 1, a signed leave, exit 0 within a few seconds.
    start_stop = time.monotonic()
    await podman("stop", containers["charlie"], within=30)
    stop_took = time.monotonic() - start_stop
    print(f"podman stop took {stop_took:.2f} s")
    inspect = json.loads((await podman("inspect", containers["charlie"])).stdout)[0]
    assert inspect["State"]["ExitCode"] == 0, await podman.logs(containers["charlie"])
    assert stop_took < 5, f"podman stop took {stop_took:.1f} s"
    assert "left the mesh (announced)" in await podman.logs(containers["charlie"])

    async def charlie_left() -> bool:
        for name in ("alpha", "bravo"):
            st = await status(podman, containers[name])
            states = {p["name"]: p["state"] for p in (st or {}).get("peers", [])}
            if states.get("charlie") != "left":
                return False
        return True

    await wait_until(charlie_left, 10, "alpha and bravo to see charlie left")
    # The two that stay are still healthy and still talk to each other.
    await podman("exec", containers["alpha"], "ping", "-6", "-c", "1", "-W", "2", v6["bravo"])
    health = await podman("exec", containers["bravo"], "meshctl", "health")
    assert health.stdout.startswith("healthy:")


async def test_entrypoint_names_the_missing_device_and_capability(
    podman: Podman, images: Images
) -> None:
    no_tun = await podman("run", "--rm", "--pull=never", images.meshd, check=False)
    assert no_tun.returncode == 2
    assert "--device /dev/net/tun" in no_tun.stderr
    no_cap = await podman(
        "run", "--rm", "--pull=never", "--device", "/dev/net/tun", images.meshd, check=False
    )  # fmt: skip
    assert no_cap.returncode == 2
    assert "--cap-add NET_ADMIN" in no_cap.stderr
