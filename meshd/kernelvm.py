"""A real Linux kernel in a virtual machine: the kernel WireGuard tests and benchmarks (root only).

    run = await run_in_vm("python -m pytest ...", rwdir=Path("/tmp/x"), within=600)
    run.accelerator, run.boot_s, run.returncode, run.output

virtme-ng (`vng`, PyPI) boots a Debian kernel image (`linux-image-amd64`, which ships
`wireguard.ko`) with QEMU over a read-only snapshot of this machine's root file system: the venv,
wireguard-tools, iproute2 and the work tree are there inside as outside, and everything the guest
writes lands in tmpfs overlays (/tmp, /run, /var, /etc), except `rwdir`, which is this machine's
directory (results come back through it). Not part of the daemon: a harness like `meshd.lab`,
which the tests and `bench` both use (bench never imports from tests/).

Accelerator: KVM when /dev/kvm opens and a KVM boot prints the script's first line within
`KVM_READY_WITHIN_S`; else QEMU's emulation (TCG, `--disable-kvm`). On the development machines
/dev/kvm exists but a KVM boot hangs (nested virtualization, PLATFORM.md): that verdict is
remembered per (host kernel, QEMU binary, guest kernel) in `VERDICTS`, so only the first run on a
machine pays the probe. `KERNEL_VM_ACCEL=kvm|emulation` forces one (not MESHD_*: those are
daemon settings, and meshd refuses unknown ones).

Cleanup: vng and its QEMU run in a process group of their own (started here); on every exit path
the group gets SIGTERM, then SIGKILL, so no QEMU outlives a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

READY_MARK = "meshd-vm: up"
"""First line the guest prints: the boot is over (the script runs)."""
KVM_READY_WITHIN_S = 20.0
"""A KVM boot of virtme-ng prints its first line in 1-3 s; a hung one never does."""
EMULATED_READY_WITHIN_S = 240.0
"""An emulated boot takes 25-90 s here, depending on what else the two cores run."""
VERDICTS = Path("/var/tmp/meshd-vm-accel.json")
"""Remembered "KVM does not boot here" verdicts (see the module docstring)."""


class VmError(Exception):
    """The VM could not be booted or did not finish; the message says why and holds the tail
    of its console output."""


@dataclass(frozen=True)
class VmRun:
    """One finished VM run."""

    accelerator: str
    """"kvm" or "emulation"."""
    why: str
    """Why this accelerator ran (forced, KVM did not boot, remembered verdict, ...)."""
    boot_s: float
    """Seconds from starting vng until the guest printed its first line."""
    total_s: float
    """Seconds from starting vng until the VM powered off."""
    returncode: int
    """The script's exit status (from `rwdir`/exit-status, written by the guest)."""
    output: str
    """The guest's console output (stdout and stderr of the script)."""


def guest_kernel() -> Path | None:
    """The newest /boot/vmlinuz-* whose modules (at /lib/modules/VERSION) hold WireGuard."""
    found = []
    for image in Path("/boot").glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / version
        if (modules / "kernel/drivers/net/wireguard/wireguard.ko").exists() or (
            modules / "kernel/drivers/net/wireguard/wireguard.ko.xz"
        ).exists():
            found.append((_version_key(version), image))
    return max(found)[1] if found else None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def _vng() -> str | None:
    # vng runs `virtme-run` from its PATH: both live in the venv's bin directory.
    return shutil.which("vng", path=f"{Path(sys.executable).parent}{os.pathsep}{_path()}")


def _path() -> str:
    return os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")


def unavailable_reason() -> str | None:
    """Why no VM can boot here (what to install), or None when everything is there."""
    if os.geteuid() != 0:
        return "the kernel VM needs root (network namespaces inside it run as root)"
    missing = []
    if _vng() is None:
        missing.append("vng (pip install virtme-ng: the project's test extra)")
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86_64 (apt-get install qemu-system-x86)")
    if shutil.which("busybox") is None:
        missing.append("busybox (apt-get install busybox-static)")
    if guest_kernel() is None:
        missing.append("a kernel image with WireGuard (apt-get install linux-image-amd64)")
    if missing:
        return "no kernel VM can boot here: missing " + ", ".join(missing)
    return None


def _verdict_key(kernel: Path) -> str:
    qemu = Path(shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    try:
        stat = qemu.stat()
        qemu_id = f"{stat.st_size}:{int(stat.st_mtime)}"
    except OSError:
        qemu_id = "?"
    return f"{os.uname().release} qemu={qemu_id} guest={kernel.name}"


def _remembered_no_kvm(kernel: Path) -> bool:
    try:
        verdicts = json.loads(VERDICTS.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(verdicts, dict) and verdicts.get(_verdict_key(kernel)) == "no-kvm"


def _remember_no_kvm(kernel: Path) -> None:
    try:
        verdicts = json.loads(VERDICTS.read_text())
    except (OSError, ValueError):
        verdicts = {}
    verdicts[_verdict_key(kernel)] = "no-kvm"
    with contextlib.suppress(OSError):
        VERDICTS.write_text(json.dumps(verdicts, indent=1) + "\n")


def _kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


class _Boot:
    """One vng process group: started, read line by line, always killed on close."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.started = 0.0
        self.ready_at = 0.0
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.started = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            # A group of its own: vng starts QEMU as its child, and killing vng alone leaves
            # QEMU running. The group is ours to end (close()). uvloop takes no
            # start_new_session, hence the preexec function.
            preexec_fn=os.setsid,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            line = raw.decode(errors="replace").rstrip("\r\n")
            if not self.ready.is_set() and READY_MARK in line:
                self.ready_at = time.monotonic()
                self.ready.set()
                continue
            self.lines.append(line)

    async def finish(self, within: float) -> int:
        """Wait until vng exits (the guest powered off); its exit status."""
        assert self.proc is not None and self._reader is not None
        await asyncio.wait_for(asyncio.shield(self._reader), within)
        return await asyncio.wait_for(self.proc.wait(), 10)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.lines[-lines:])

    async def close(self) -> None:
        if self.proc is None:
            return
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            # A process group has no exit notification: poll it, bounded.
            while time.monotonic() < deadline and _group_alive(self.proc.pid):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        if self.proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def run_in_vm(
    script: str,
    rwdir: Path,
    within: float = 600.0,
    memory: str = "1536M",
    cpus: int = 2,
    accel: str | None = None,
) -> VmRun:
    """Boot the guest kernel, run `script` (sh) as root inside, power off; return what happened.

    `rwdir` is shared read-write with the guest (at the same path). `within` bounds the
    script's run after the boot. Raises VmError when no VM can boot (the reason says what is
    missing or what the boot printed) or when the script did not finish in time."""
    reason = unavailable_reason()
    if reason is not None:
        raise VmError(reason)
    kernel = guest_kernel()
    assert kernel is not None
    rwdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (local, instant)
    status_file = rwdir / "exit-status"
    status_file.unlink(missing_ok=True)
    inner = rwdir / "vm-script.sh"
    inner.write_text(
        f'echo "{READY_MARK} $(cut -d" " -f1 /proc/uptime)"\n'
        f"( {script}\n) 2>&1\n"
        f"echo $? > {shlex.quote(str(status_file))}\n"
        'echo "meshd-vm: done at $(cut -d" " -f1 /proc/uptime) s of uptime"\n'
    )
    choice = accel or os.environ.get("KERNEL_VM_ACCEL", "auto")
    plan: list[tuple[str, str]] = []
    if choice == "kvm":
        plan = [("kvm", "forced by KERNEL_VM_ACCEL=kvm")]
    elif choice == "emulation":
        plan = [("emulation", "forced by KERNEL_VM_ACCEL=emulation")]
    elif not _kvm_usable():
        plan = [("emulation", "no usable /dev/kvm")]
    elif _remembered_no_kvm(kernel):
        plan = [("emulation", f"KVM did not boot here before (remembered in {VERDICTS})")]
    else:
        plan = [
            ("kvm", "KVM booted"),
            ("emulation", f"KVM did not boot within {KVM_READY_WITHIN_S:.0f} s"),
        ]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{_path()}")
    failures = []
    for accelerator, why in plan:
        argv = [
            _vng() or "vng", "--run", str(kernel), "--memory", memory, "--cpus", str(cpus),
            "--rwdir", str(rwdir), "--exec", f"sh {shlex.quote(str(inner))}",
        ]  # fmt: skip
        if accelerator == "emulation":
            argv.insert(1, "--disable-kvm")
        boot = _Boot(argv, env)
        try:
            await boot.start()
            ready_within = KVM_READY_WITHIN_S if accelerator == "kvm" else EMULATED_READY_WITHIN_S
            try:
                await asyncio.wait_for(boot.ready.wait(), ready_within)
            except TimeoutError:
                failures.append(
                    f"{accelerator}: no output within {ready_within:.0f} s:\n{boot.tail()}"
                )
                if accelerator == "kvm" and choice == "auto":
                    _remember_no_kvm(kernel)
                continue
            try:
                await boot.finish(within)
            except TimeoutError:
                raise VmError(
                    f"running in the kernel VM ({accelerator}): not finished {within:.0f} s after "
                    f"the boot; last output:\n{boot.tail()}"
                ) from None
            try:
                returncode = int(status_file.read_text().strip())
            except (OSError, ValueError):
                raise VmError(
                    f"running in the kernel VM ({accelerator}): the guest wrote no exit status "
                    f"(it crashed or was cut off); last output:\n{boot.tail()}"
                ) from None
            return VmRun(
                accelerator,
                why,
                boot.ready_at - boot.started,
                time.monotonic() - boot.started,
                returncode,
                "\n".join(boot.lines),
            )
        finally:
            await boot.close()
    raise VmError("booting the kernel VM: " + "; ".join(failures))
