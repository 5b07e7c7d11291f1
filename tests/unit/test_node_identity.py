from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshd import keyfiles
from meshd.ca import CertificateAuthority
from meshd.config import Config
from meshd.core.identity import SigningKey
from meshd.node import StartupError, load_identity


def make_node(tmp_path: Path, **issue: object) -> Config:
    ca = CertificateAuthority.init(tmp_path / "ca", "prod")
    identity = SigningKey(bytes([7]) * 32)
    now = int(time.time())
    args: dict[str, object] = {
        "name": "n1",
        "identity_key": identity.public,
        "ipv4": None,
        "ipv4_pool": "100.64.0.0/10",
        "prefixes": ["10.1.0.0/24"],
        "roles": [],
        "not_before": now - 60,
        "not_after": now + 3600,
    }
    args.update(issue)
    cert = ca.issue(**args)  # type: ignore[arg-type]
    etc = tmp_path / "etc"
    keyfiles.write_secret(etc / "identity.key", keyfiles.encode_key(identity.seed))
    keyfiles.write_public(etc / "node.cert", keyfiles.armor(keyfiles.CERT_LABEL, cert.raw))
    keyfiles.write_public(etc / "ca.pub", (tmp_path / "ca" / "ca.pub").read_bytes())
    return Config(
        mesh="prod",
        ca_public_key=etc / "ca.pub",
        certificate=etc / "node.cert",
        identity_key=etc / "identity.key",
    )


def test_valid_node_loads(tmp_path: Path) -> None:
    node = load_identity(make_node(tmp_path))
    assert node.cert.name == "n1"
    assert node.overlay_ipv6.startswith("fd44:c16d:b708:0:")


def test_expired_certificate_stops_startup(tmp_path: Path) -> None:
    now = int(time.time())
    config = make_node(tmp_path, not_before=now - 7200, not_after=now - 3600)
    with pytest.raises(StartupError, match=r"certificate .*node.cert: cert_expired"):
        load_identity(config)


def test_key_of_another_node_stops_startup(tmp_path: Path) -> None:
    config = make_node(tmp_path, identity_key=SigningKey(bytes([8]) * 32).public)
    with pytest.raises(StartupError, match="does not belong to certificate"):
        load_identity(config)


def test_wrong_mesh_or_ca_stops_startup(tmp_path: Path) -> None:
    config = make_node(tmp_path)
    with pytest.raises(StartupError, match="wrong_mesh"):
        load_identity(Config(**{**config.__dict__, "mesh": "staging"}))
    other = tmp_path / "other.pub"
    keyfiles.write_public(other, keyfiles.encode_key(SigningKey(bytes(32)).public))
    with pytest.raises(StartupError, match="unknown_ca"):
        load_identity(Config(**{**config.__dict__, "ca_public_key": other}))


def test_unsafe_or_missing_files_stop_startup(tmp_path: Path) -> None:
    config = make_node(tmp_path)
    config.identity_key.chmod(0o644)
    with pytest.raises(StartupError, match="too open"):
        load_identity(config)
    config.identity_key.unlink()
    with pytest.raises(StartupError, match=r"identity\.key: No such file"):
        load_identity(config)


def test_uncertified_prefix_stops_startup(tmp_path: Path) -> None:
    config = make_node(tmp_path)
    config = Config(**{**config.__dict__, "advertise_prefixes": ["0.0.0.0/0"]})
    with pytest.raises(StartupError, match="not granted by certificate"):
        load_identity(config)
