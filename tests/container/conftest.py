"""Shared pieces of the container tests: a podman that works on this host (PLATFORM.md: runc,
cgroupfs, a CONTAINERS_CONF file, --pull=never), the images built once per session, and
containers/networks named with the run prefix that are removed even when a test fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Every container of the mesh tests: what wireguard-go needs and nothing more.
MESHD_RUN_ARGS = ("--cap-add", "NET_ADMIN", "--device", "/dev/net/tun")


def _why_podman_cannot_run() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/dev install adds it)"
    if os.geteuid() != 0:
        return "container tests need rootful podman (wireguard-go needs /dev/net/tun and NET_ADMIN)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing on this host"
    with tempfile.TemporaryDirectory() as conf_dir:
        try:
            info = subprocess.run(
                ["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"],
                env=podman_env(Path(conf_dir)),
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            return "podman cannot run here: `podman info` hung for 60 s"
    if info.returncode != 0:
        return f"podman cannot run here: `podman info` failed: {info.stderr.strip()[-300:]}"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _why_podman_cannot_run()
    if reason is None:
        return
    for item in items:
        if "tests/container/" in str(item.path):
            item.add_marker(pytest.mark.skip(reason=reason))


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class PodmanError(Exception):
    """A podman command failed; the message holds the command and its stderr."""


@dataclass
class Podman:
    """podman with this host's settings; remembers what it created so that it can remove it."""

    prefix: str
    env: dict[str, str]
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    async def __call__(self, *args: str, check: bool = True, within: float = 60.0) -> Result:
        # Output goes to files, not pipes: `podman run -d` leaves conmon holding the pipes open,
        # so reading them to EOF would wait for the container to end.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = await asyncio.create_subprocess_exec(
                "podman", *args, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
                env=self.env,
            )  # fmt: skip
            try:
                await asyncio.wait_for(proc.wait(), within)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise PodmanError(f"podman {' '.join(args)}: timed out after {within} s") from None
            out.seek(0)
            err.seek(0)
            result = Result(proc.returncode or 0, out.read().decode(), err.read().decode())
        if check and result.returncode != 0:
            raise PodmanError(
                f"podman {' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}"
            )
        return result

    async def run(self, name: str, image: str, *args: str, run_args: tuple[str, ...] = ()) -> str:
        """Start a detached container called `<prefix>-<name>`; returns its full name."""
        full = f"{self.prefix}-{name}"
        self.containers.append(full)
        await self("run", "-d", "--pull=never", "--name", full, *run_args, image, *args)
        return full

    async def network(self, name: str) -> str:
        full = f"{self.prefix}-{name}"
        self.networks.append(full)
        await self("network", "create", full)
        return full

    async def ip(self, container: str, network: str) -> str:
        out = await self("inspect", container)
        nets = json.loads(out.stdout)[0]["NetworkSettings"]["Networks"]
        return str(nets[network]["IPAddress"])

    async def logs(self, container: str) -> str:
        result = await self("logs", container, check=False)
        return result.stdout + result.stderr

    async def cleanup(self) -> None:
        """Remove every container (with its anonymous volumes: the image declares
        VOLUME /var/lib/meshd) and network this object made, whatever state they are in."""
        for name in reversed(self.containers):
            await self("rm", "-f", "-v", "-t", "2", name, check=False)
        for name in reversed(self.networks):
            await self("network", "rm", "-f", name, check=False)
        self.containers.clear()
        self.networks.clear()


def podman_env(conf_dir: Path) -> dict[str, str]:
    """PLATFORM.md: crun fails on this host's hybrid cgroups (runc works), cgroupfs, file events,
    and ulimits the host can actually grant."""
    hard = subprocess.run(
        ["sh", "-c", "ulimit -Hn"], capture_output=True, text=True, check=True
    ).stdout.strip()
    conf = conf_dir / "containers.conf"
    conf.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={hard}:{hard}", "nproc=32768:32768"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


@dataclass(frozen=True)
class Images:
    meshd: str
    systemd: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def images(run_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """Both images, built once per session through docker/build (the debootstrap bases are
    cached by tag, so only the first run on a machine makes them), removed at the end."""
    env = podman_env(tmp_path_factory.mktemp("podman"))
    env["PYTHON"] = str(REPO / ".venv" / "bin" / "python")
    if not Path(env["PYTHON"]).exists():
        env["PYTHON"] = shutil.which("python3") or "python3"
    meshd = f"localhost/{run_prefix}-meshd:test"
    systemd = f"localhost/{run_prefix}-meshd-systemd:test"
    try:
        steps = (
            ["docker/build", "--bases"],  # both debootstraps side by side; cached after that
            ["docker/build", meshd],
            ["docker/build", "--systemd", systemd],
        )
        for argv in steps:
            start = time.monotonic()
            done = subprocess.run(
                argv,
                cwd=REPO,
                env={**env, "MESHD_IMAGE": meshd},
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode != 0:
                raise PodmanError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr}")
            print(f"{' '.join(argv)}: {time.monotonic() - start:.1f} s")
        yield Images(meshd, systemd, env)
    finally:
        for image in (systemd, meshd):
            subprocess.run(
                ["podman", "rmi", "-f", image], env=env, capture_output=True, check=False
            )


@pytest.fixture
async def podman(
    images: Images, run_prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Podman]:
    # Per-test prefix too: a leftover names the run and the test that made it.
    test = request.node.name.removeprefix("test_")[:20].replace("_", "-")
    p = Podman(f"{run_prefix}-{test}", images.env)
    try:
        yield p
    finally:
        await p.cleanup()


async def wait_until(
    condition: Callable[[], Awaitable[bool]], within: float, what: str, interval: float = 0.1
) -> float:
    """Wait until `condition()` is true; returns the seconds it took. Polling: podman state and
    pings have no change notification."""
    start = time.monotonic()
    while True:
        if await condition():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise TimeoutError(f"waiting for {what}: not true after {within} s")
        await asyncio.sleep(interval)


def issue_node_files(workdir: Path, mesh: str, names: list[str]) -> dict[str, Path]:
    """The documented invocation: `meshctl ca init` once, `meshctl cert issue` per node."""
    meshctl = REPO / ".venv" / "bin" / "meshctl"
    cmd = [str(meshctl)] if meshctl.exists() else ["meshctl"]
    ca = workdir / "ca"
    subprocess.run([*cmd, "ca", "init", "--mesh", mesh, "--dir", str(ca)], check=True,
                   capture_output=True)  # fmt: skip
    out = {}
    for name in names:
        d = workdir / name
        subprocess.run(
            [*cmd, "cert", "issue", "--name", name, "--ca-dir", str(ca), "--out-dir", str(d)],
            check=True,
            capture_output=True,
        )
        out[name] = d
    return out
