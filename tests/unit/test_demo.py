import subprocess
import sys


def test_demo_runs_and_refuses_the_tampered_certificate() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "meshd.demo"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is invalid: bad_signature: certificate of 'mallo'" in r.stdout
    assert r.stdout.count("issued certificate serial") == 5
