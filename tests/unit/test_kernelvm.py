"""The kernel VM harness without a VM: what it says when nothing can boot, and how inner JUnit
results map back to the outer test IDs."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd import kernelvm
from tests.kernel.conftest import _parse_junit


def test_missing_tools_are_named_with_their_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernelvm.os, "geteuid", lambda: 0)
    monkeypatch.setattr(kernelvm.shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(kernelvm, "guest_kernel", lambda: None)
    assert kernelvm.unavailable_reason() == (
        "no kernel VM can boot here: missing vng (pip install virtme-ng: the project's test "
        "extra), qemu-system-x86_64 (apt-get install qemu-system-x86), busybox (apt-get install "
        "busybox-static), a kernel image with WireGuard (apt-get install linux-image-amd64)"
    )


def test_not_root_is_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernelvm.os, "geteuid", lambda: 1000)
    assert kernelvm.unavailable_reason() == (
        "the kernel VM needs root (network namespaces inside it run as root)"
    )


def test_inner_junit_maps_to_outer_node_ids(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "tests" / "kernel").mkdir(parents=True)
    (root / "tests" / "kernel" / "test_x.py").write_text("")
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.kernel.test_x" name="test_ok" time="1.5"/>'
        '<testcase classname="tests.kernel.test_x" name="test_bad[a]" time="2">'
        '<failure message="assert 1 == 2">E assert 1 == 2</failure></testcase>'
        '<testcase classname="tests.kernel.test_x" name="test_skip" time="0">'
        '<skipped message="no module" /></testcase>'
        '<testcase classname="tests.kernel.test_x" name="test_setup" time="0">'
        '<error message="fixture failed">boom</error></testcase>'
        "</testsuite></testsuites>"
    )
    got = {k: (v.outcome, v.text, v.duration) for k, v in _parse_junit(junit, root).items()}
    assert got == {
        "tests/kernel/test_x.py::test_ok": ("passed", "", 1.5),
        "tests/kernel/test_x.py::test_bad[a]": ("failed", "E assert 1 == 2", 2.0),
        "tests/kernel/test_x.py::test_skip": ("skipped", "no module", 0.0),
        "tests/kernel/test_x.py::test_setup": ("failed", "boom", 0.0),
    }
