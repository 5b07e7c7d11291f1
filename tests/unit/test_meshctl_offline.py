"""meshctl's offline CA and certificate commands, run as an operator would (subprocess)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshd import keyfiles
from meshd.core.cert import decode_certificate
from meshd.node import StartupError, load_psk


def meshctl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshd.cli", *args], cwd=cwd, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    r = meshctl(tmp_path, "ca", "init", "--mesh", "prod")
    assert r.returncode == 0, r.stderr
    return tmp_path


@pytest.mark.parametrize("args", [["--help"], ["ca", "--help"], ["cert", "--help"]])
def test_help_exits_zero(tmp_path: Path, args: list[str]) -> None:
    r = meshctl(tmp_path, *args)
    assert r.returncode == 0
    assert "usage: meshctl" in r.stdout


def test_ca_init_writes_private_key_safely(ca_dir: Path) -> None:
    ca = ca_dir / "ca"
    assert stat.S_IMODE(ca.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca / "ca.key").stat().st_mode) == 0o600
    assert len(keyfiles.read_key(ca / "ca.pub", secret=False)) == 32
    before = (ca / "ca.key").read_bytes()
    r = meshctl(ca_dir, "ca", "init", "--mesh", "prod")
    assert r.returncode == 1
    assert "file exists (use --force" in r.stderr
    assert (ca / "ca.key").read_bytes() == before


def test_issue_then_show(ca_dir: Path) -> None:
    r = meshctl(ca_dir, "cert", "issue", "--name", "web-1", "--ipv4", "auto",
                "--prefix", "10.1.0.0/24", "--role", "gateway")  # fmt: skip
    assert r.returncode == 0, r.stderr
    node = ca_dir / "nodes" / "web-1"
    assert stat.S_IMODE(node.stat().st_mode) == 0o700
    assert stat.S_IMODE((node / "identity.key").stat().st_mode) == 0o600
    r = meshctl(ca_dir, "cert", "show", str(node / "node.cert"), "--ca", "ca/ca.pub", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["name"] == "web-1"
    assert info["state"] == "valid"
    assert info["trusted"] is True
    assert info["prefixes"] == ["10.1.0.0/24"]
    assert info["roles"] == ["gateway"]
    assert info["addresses"][0].startswith("fd44:c16d:b708:0:")  # mesh "prod" /48
    assert info["addresses"][1].startswith("100.")
    # The identity key on disk is the one certified.
    from meshd.core.identity import SigningKey

    seed = keyfiles.read_key(node / "identity.key", secret=True)
    assert keyfiles.encode_key(SigningKey(seed).public).decode().strip() == info["identity_key"]


def test_tampered_certificate_is_refused_by_show(ca_dir: Path) -> None:
    assert meshctl(ca_dir, "cert", "issue", "--name", "db-1").returncode == 0
    path = ca_dir / "nodes" / "db-1" / "node.cert"
    raw = bytearray(keyfiles.read_armored(path, keyfiles.CERT_LABEL))
    i = raw.index(b"db-1")
    raw[i : i + 4] = b"db-2"
    path.write_bytes(keyfiles.armor(keyfiles.CERT_LABEL, bytes(raw)))
    r = meshctl(ca_dir, "cert", "show", str(path))
    assert r.returncode == 1
    assert "is invalid: bad_signature" in r.stderr
    assert "Traceback" not in r.stderr


def test_show_against_another_ca_is_untrusted(
    ca_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = tmp_path_factory.mktemp("other")
    assert meshctl(other, "ca", "init", "--mesh", "prod").returncode == 0
    assert meshctl(ca_dir, "cert", "issue", "--name", "x").returncode == 0
    r = meshctl(ca_dir, "cert", "show", "nodes/x/node.cert", "--ca", str(other / "ca" / "ca.pub"))
    assert r.returncode == 1
    assert "trusted:      NO: unknown_ca" in r.stdout


def test_issue_for_given_public_key_and_explicit_ipv4(ca_dir: Path) -> None:
    from meshd.core.identity import SigningKey

    pub = keyfiles.encode_key(SigningKey(bytes(32)).public).decode().strip()
    r = meshctl(ca_dir, "cert", "issue", "--name", "k", "--public-key", pub, "--ipv4", "10.9.0.5")
    assert r.returncode == 0, r.stderr
    assert not (ca_dir / "nodes" / "k" / "identity.key").exists()
    cert = decode_certificate(
        keyfiles.read_armored(ca_dir / "nodes/k/node.cert", "MESHD CERTIFICATE")
    )
    assert cert.addresses[1] == "10.9.0.5"
    # The same IPv4 address cannot be granted to another live node.
    r = meshctl(ca_dir, "cert", "issue", "--name", "k2", "--ipv4", "10.9.0.5")
    assert r.returncode == 1
    assert "10.9.0.5 is already issued" in r.stderr


def test_revoke_writes_signed_record(ca_dir: Path) -> None:
    assert meshctl(ca_dir, "cert", "issue", "--name", "gone").returncode == 0
    r = meshctl(ca_dir, "cert", "revoke", "gone", "--reason", "laptop stolen")
    assert r.returncode == 0, r.stderr
    from meshd.core.cert import decode_revocation

    rev = decode_revocation(
        keyfiles.read_armored(ca_dir / "ca/revocations/1.rev", "MESHD REVOCATION")
    )
    assert (rev.serial, rev.reason) == (1, "laptop stolen")
    r = meshctl(ca_dir, "cert", "revoke", "nobody")
    assert r.returncode == 1
    assert "no certificate with serial or name 'nobody'" in r.stderr


def test_bad_input_is_a_message_not_a_traceback(ca_dir: Path) -> None:
    for args in (["cert", "issue", "--name", "Bad Name"], ["cert", "show", "missing.cert"],
                 ["cert", "issue", "--name", "a", "--ca-dir", "nowhere"],
                 ["cert", "issue", "--name", "a", "--prefix", "10.0.0.1/8"]):  # fmt: skip
        r = meshctl(ca_dir, *args)
        assert r.returncode == 1, args
        assert r.stderr.startswith("meshctl: "), (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_psk_init_and_roll(tmp_path: Path) -> None:
    secret = tmp_path / "psk.secret"
    r = meshctl(tmp_path, "psk", "init", str(secret), "--period", "3600")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    first = load_psk(secret)
    assert [c.period for c in first.chains] == [3600]
    assert r.stdout.startswith(f"wrote mesh PSK secret {first.ids[0].hex()}")

    at = int(time.time()) + 86400
    r = meshctl(tmp_path, "psk", "roll", str(secret), "--at", str(at))
    assert r.returncode == 0, r.stderr
    rolled = load_psk(secret)
    assert rolled.ids[0] == first.ids[0] and len(rolled.ids) == 2
    assert [c.active_from for c in rolled.chains] == [0, at]
    assert rolled.active(at - 1).secret_id == first.ids[0]
    assert rolled.active(at).secret_id == rolled.ids[1]

    r = meshctl(tmp_path, "psk", "roll", str(secret), "--at", "1")
    assert (r.returncode, r.stderr.strip()) == (
        1,
        "meshctl: --at: the new secret must become active in the future",
    )
    assert load_psk(secret) == rolled  # refused: nothing changed

    # meshd refuses a secret others may read, naming the file and the fix.
    secret.chmod(0o644)
    with pytest.raises(StartupError, match=r"psk_file .*: permissions 0o644 are too open"):
        load_psk(secret)
