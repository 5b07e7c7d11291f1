"""Kernel tests: real kernel WireGuard, in network namespaces, inside one virtual machine.

A test marked `kernel` runs where kernel WireGuard is: directly when this machine's kernel has
the module (a production-like host) or when this session already runs inside the VM
(KERNEL_VM_GUEST=1). Otherwise the outer session boots ONE VM (`meshd.kernelvm`) at the first kernel
test, runs every selected kernel test there in one inner pytest, and reports each one from the
inner JUnit file as if it ran here: pass, fail (with the inner traceback and the end of the
VM's output) or skip (with the inner reason). Where no VM can boot (no QEMU, no kernel image,
not root), the tests skip and say what is missing.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _pytest.reports import TestReport

from meshd import kernelvm
from meshd.lab import Lab
from tests.netns.conftest import pytest_runtest_makereport  # meshd log tails under a failure

IN_VM = os.environ.get("KERNEL_VM_GUEST") == "1"
"""Set in the VM (not MESHD_*: every MESHD_ variable is a daemon setting, and meshd refuses
unknown ones)."""
INNER_WITHIN_S = 420.0
"""Bound on the inner pytest's run (it takes ~2 minutes under emulation)."""
OUTPUT_TAIL_LINES = 150
_lab_counter = itertools.count()
__all__ = ["pytest_runtest_makereport"]


def _host_has_wireguard() -> bool:
    if Path("/sys/module/wireguard").exists():
        return True
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["modprobe", "-q", "wireguard"], capture_output=True, check=False)
    return r.returncode == 0


@dataclass
class Outcome:
    outcome: str
    """"passed", "failed" or "skipped"."""
    text: str = ""
    """Traceback (failed) or reason (skipped)."""
    duration: float = 0.0


@dataclass
class VmSession:
    """The one VM run of this session: started at the first delegated test."""

    items: list[pytest.Item]
    rootdir: Path
    basetemp: Path
    results: dict[str, Outcome] | None = None
    run: kernelvm.VmRun | None = None
    error: str | None = None
    skip_reason: str | None = None
    shown_output: bool = False
    reported: set[str] = field(default_factory=set)

    def result(self, item: pytest.Item) -> Outcome:
        if self.results is None:
            self._run()
        if self.skip_reason is not None:
            return Outcome("skipped", self.skip_reason)
        if self.error is not None:
            return Outcome("failed", self.error)
        assert self.results is not None
        return self.results.get(
            item.nodeid,
            Outcome("failed", "the inner pytest in the VM reported nothing for this test"),
        )

    def _run(self) -> None:
        self.results = {}
        reason = kernelvm.unavailable_reason()
        if reason is not None:
            self.skip_reason = reason
            return
        rwdir = self.basetemp / "kernel-vm"
        junit = rwdir / "junit.xml"
        nodeids = " ".join(shlex.quote(i.nodeid) for i in self.items)
        pythonpath = os.pathsep.join(
            p for p in (str(self.rootdir), os.environ.get("PYTHONPATH", "")) if p
        )
        script = (
            f"modprobe wireguard || exit 3\n"
            f"cd {shlex.quote(str(self.rootdir))} || exit 3\n"
            'echo "kernel VM: pytest starts at $(cut -d" " -f1 /proc/uptime) s of uptime"\n'
            f"KERNEL_VM_GUEST=1 PYTHONPATH={shlex.quote(pythonpath)} {shlex.quote(sys.executable)} "
            "-m pytest -p no:cacheprovider -q -rfEs --durations=5 "
            "--basetemp=/run/meshd-kernel-tests "
            f"--junitxml={shlex.quote(str(junit))} {nodeids}"
        )
        try:
            self.run = asyncio.run(kernelvm.run_in_vm(script, rwdir, within=INNER_WITHIN_S))
            (rwdir / "output.txt").write_text(self.run.output)
        except kernelvm.VmError as exc:
            if str(exc).startswith("booting"):
                self.skip_reason = f"no kernel VM could boot: {exc}"
            else:
                self.error = str(exc)
            return
        try:
            self.results = _parse_junit(junit, self.rootdir)
        except (OSError, ET.ParseError) as exc:
            self.error = (
                f"the inner pytest in the VM exited {self.run.returncode} and left no JUnit "
                f"file ({exc}); its output:\n{self._tail()}"
            )

    def _tail(self) -> str:
        lines = self.run.output.splitlines() if self.run is not None else []
        return "\n".join(lines[-OUTPUT_TAIL_LINES:])

    def sections(self, outcome: Outcome) -> list[tuple[str, str]]:
        """The end of the VM's output, under the first failed test only (it holds them all)."""
        if outcome.outcome != "failed" or self.shown_output or self.run is None:
            return []
        self.shown_output = True
        where = self.basetemp / "kernel-vm" / "output.txt"
        title = f"kernel VM output (last {OUTPUT_TAIL_LINES} lines; all of it in {where})"
        return [(title, self._tail())]

    def summary(self) -> str | None:
        if self.skip_reason is not None:
            return f"kernel VM: not run: {self.skip_reason}"
        if self.run is None:
            return None if self.error is None else f"kernel VM: failed: {self.error[:300]}"
        r = self.run
        counts: dict[str, int] = {}
        for o in (self.results or {}).values():
            counts[o.outcome] = counts.get(o.outcome, 0) + 1
        tally = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        return (
            f"kernel VM: {r.accelerator} ({r.why}); boot {r.boot_s:.1f} s, whole run "
            f"{r.total_s:.1f} s; inner pytest exit {r.returncode}: {tally}"
        )


def _parse_junit(path: Path, rootdir: Path) -> dict[str, Outcome]:
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        parts = classname.split(".")
        # classname is the module's dotted path (plus a class): find where the module ends.
        for cut in range(len(parts), 0, -1):
            module = Path(*parts[:cut]).with_suffix(".py")
            if (rootdir / module).exists():
                nodeid = "::".join([module.as_posix(), *parts[cut:], name])
                break
        else:
            continue
        duration = float(case.get("time", "0") or 0)
        failed = case.find("failure")
        if failed is None:
            failed = case.find("error")
        skipped = case.find("skipped")
        if failed is not None:
            text = failed.text or failed.get("message", "")
            out[nodeid] = Outcome("failed", text, duration)
        elif skipped is not None:
            out[nodeid] = Outcome("skipped", skipped.get("message", ""), duration)
        else:
            out[nodeid] = Outcome("passed", "", duration)
    return out


_session: VmSession | None = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    global _session
    kernel_items = [i for i in items if i.get_closest_marker("kernel") is not None]
    if not kernel_items or IN_VM:
        return
    if os.geteuid() != 0:
        for item in kernel_items:
            item.add_marker(pytest.mark.skip(reason="kernel tests need root"))
        return
    if _host_has_wireguard():
        return  # this kernel has WireGuard: the tests run right here
    basetemp = Path(str(config._tmp_path_factory.getbasetemp()))  # type: ignore[attr-defined]
    _session = VmSession(kernel_items, config.rootpath, basetemp)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    if _session is None or item not in _session.items:
        return None
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    first = _session.results is None
    start = time.time()
    outcome = _session.result(item)
    vm_s = time.time() - start if first else 0.0
    keywords = {k: 1 for k in item.keywords}

    def report(when: str, result: str, longrepr: object = None, duration: float = 0.0) -> None:
        rep = TestReport(
            item.nodeid, item.location, keywords, result, longrepr, when,  # type: ignore[arg-type]
            sections=_session.sections(outcome) if result == "failed" else (),  # type: ignore[union-attr]
            duration=duration, start=start, stop=start + duration,
        )  # fmt: skip
        ihook.pytest_runtest_logreport(report=rep)

    # The boot and the whole inner run are charged to the first test's setup (--durations).
    if outcome.outcome == "skipped":
        _, line, _ = item.location
        report("setup", "skipped", (str(item.path), (line or 0) + 1, f"Skipped: {outcome.text}"))
    else:
        report("setup", "passed", duration=vm_s)
        if outcome.outcome == "failed":
            report("call", "failed", f"[in the kernel VM]\n{outcome.text}", outcome.duration)
        else:
            report("call", "passed", duration=outcome.duration)
    report("teardown", "passed")
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    line = _session.summary() if _session is not None else None
    if line is not None:
        terminalreporter.write_line(line)


# --- fixtures of the kernel tests (they run inside the VM) -------------------------------


@pytest.fixture
async def klab2(run_prefix: str) -> AsyncIterator[Lab]:
    """Two lab hosts on a bridge."""
    async with Lab(f"{run_prefix[:6]}k{next(_lab_counter) % 10}", hosts=2) as lab:
        yield lab
