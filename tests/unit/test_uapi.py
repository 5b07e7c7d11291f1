"""UAPI encoding (wireguard.com/xplatform) and decoding, without a daemon."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from pathlib import Path

import pytest

from meshd.adapters.wireguard import (
    UserspaceBackend,
    WireGuardError,
    _check_uapi_framing,
    decode_uapi_get,
    describe,
    encode_uapi_set,
    format_endpoint,
    kernel_peer_spec,
    parse_endpoint,
)
from meshd.core.wgplan import (
    AddPeer,
    RemovePeer,
    SetFwmark,
    SetListenPort,
    SetPrivateKey,
    UpdatePeer,
    WgPeer,
    clamp_private_key,
)

K1, K2 = bytes([1]) * 32, bytes([2]) * 32
PSK = bytes([7]) * 32
N = ipaddress.ip_network


def test_endpoints_round_trip() -> None:
    for ep in [("192.0.2.1", 51820), ("2001:db8::1", 1)]:
        assert parse_endpoint(format_endpoint(ep)) == ep
    assert format_endpoint(("2001:db8::1", 1)) == "[2001:db8::1]:1"


def test_set_lines() -> None:
    peer = WgPeer(K2, ("2001:db8::2", 51820), (N("fd00::2/128"), N("10.0.0.2/32")), PSK, 25)
    ops = [
        SetPrivateKey(K1),
        SetListenPort(51820),
        SetFwmark(0x6D65),
        RemovePeer(K1),
        AddPeer(WgPeer(K1)),
        UpdatePeer(peer),
    ]
    assert encode_uapi_set(ops) == [
        f"private_key={clamp_private_key(K1).hex()}",
        "listen_port=51820",
        "fwmark=28005",
        f"public_key={K1.hex()}",
        "remove=true",
        f"public_key={K1.hex()}",
        f"preshared_key={bytes(32).hex()}",
        "persistent_keepalive_interval=0",
        "replace_allowed_ips=true",
        f"public_key={K2.hex()}",
        "update_only=true",  # directly after public_key, or it applies to nothing
        "endpoint=[2001:db8::2]:51820",
        f"preshared_key={PSK.hex()}",
        "persistent_keepalive_interval=25",
        "replace_allowed_ips=true",  # before the allowed_ip lines
        "allowed_ip=10.0.0.2/32",
        "allowed_ip=fd00::2/128",
    ]


def test_get_answer_is_decoded() -> None:
    lines = [
        f"private_key={clamp_private_key(K1).hex()}",
        "listen_port=51820",
        "fwmark=28005",
        f"public_key={K2.hex()}",
        f"preshared_key={bytes(32).hex()}",
        "protocol_version=1",
        "endpoint=[2001:db8::2]:4000",
        "last_handshake_time_sec=1700000000",
        "last_handshake_time_nsec=500000000",
        "tx_bytes=10",
        "rx_bytes=20",
        "persistent_keepalive_interval=0",
        "allowed_ip=fd00::2/128",
        "allowed_ip=10.0.0.2/32",
    ]
    status = decode_uapi_get(lines)
    assert status.device.private_key == clamp_private_key(K1)
    assert status.device.listen_port == 51820
    assert status.device.fwmark == 0x6D65
    assert status.device.peers == (
        WgPeer(K2, ("2001:db8::2", 4000), (N("10.0.0.2/32"), N("fd00::2/128"))),
    )
    p = status.peers[K2]
    assert (p.last_handshake, p.rx_bytes, p.tx_bytes) == (1700000000.5, 20, 10)


def test_errors_describe_without_keys() -> None:
    text = describe([SetPrivateKey(K1), AddPeer(WgPeer(K2, None, (), PSK))])
    assert text == "private key and 1 peer(s)"
    assert K1.hex() not in text and PSK.hex() not in text


def test_run_wireguard_is_the_default_socket_dir_not_a_private_one() -> None:
    # /var/run -> /run: the systemd unit's /run/wireguard must not need a mount namespace
    # (unshare needs CAP_SYS_ADMIN, which the unit does not grant).
    from pathlib import Path

    from meshd.adapters.wireguard import UserspaceBackend

    argv = UserspaceBackend(socket_dir=Path("/run/wireguard"))._argv("mesh0")
    assert argv[1:] == ["-f", "mesh0"]
    private = UserspaceBackend(socket_dir=Path("/tmp/meshd-x/wg"))._argv("mesh0")
    assert private[0] == "unshare"


def test_psk_only_update_leaves_allowed_ips_alone() -> None:
    # wireguard-go replaces AllowedIPs by removing all, then inserting each: a PSK change must
    # not open that window (a packet in it has no route and is dropped).
    peer = WgPeer(K2, None, (N("fd00::2/128"),), PSK, 25)
    assert encode_uapi_set([UpdatePeer(peer, allowed_ips_changed=False)]) == [
        f"public_key={K2.hex()}",
        "update_only=true",
        f"preshared_key={PSK.hex()}",
        "persistent_keepalive_interval=25",
    ]


def test_kernel_peer_spec_replaces_allowed_ips_only_when_they_changed() -> None:
    peer = WgPeer(K2, None, (N("fd00::2/128"),), PSK, 25)
    assert kernel_peer_spec(AddPeer(peer))["allowed_ips"] == ["fd00::2/128"]
    assert kernel_peer_spec(AddPeer(peer))["replace_allowed_ips"] is True
    assert kernel_peer_spec(UpdatePeer(peer))["replace_allowed_ips"] is True
    psk_only = kernel_peer_spec(UpdatePeer(peer, allowed_ips_changed=False))
    assert "allowed_ips" not in psk_only and "replace_allowed_ips" not in psk_only
    assert base64.b64decode(psk_only["preshared_key"]) == PSK


# An endpoint host Python's ipaddress accepts (an IPv6 zone ID keeps any character but '/' and
# '%') and prints back unchanged: a blank line in it would end the set transaction early.
EVIL_HOST = "::%x]:1\nremove=true\n\nendpoint=[::1"


def test_uapi_set_refuses_a_value_that_breaks_the_line_framing() -> None:
    evil = WgPeer(K2, (EVIL_HOST, 51820), (N("fd00::2/128"),))
    with pytest.raises(WireGuardError) as exc:
        encode_uapi_set([AddPeer(WgPeer(K1)), AddPeer(evil)])
    assert str(exc.value) == (
        f"encoding a UAPI set: the endpoint value of peer {K2.hex()[:16]} holds characters "
        "that would break the key=value line framing; nothing was written"
    )


@pytest.mark.parametrize("value", ["a\nb", "a=b", "a\x00b", "a b", ""])
def test_uapi_framing_check_refuses_newline_equals_nul_space_and_empty(value: str) -> None:
    with pytest.raises(WireGuardError, match="listen_port value holds characters"):
        _check_uapi_framing([f"listen_port={value}"])


async def test_userspace_apply_writes_nothing_when_a_value_is_refused(tmp_path: Path) -> None:
    received: list[bytes] = []

    async def fake_wireguard_go(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))
        writer.write(b"errno=0\n\n")
        writer.close()

    server = await asyncio.start_unix_server(fake_wireguard_go, str(tmp_path / "mesh0.sock"))
    try:
        backend = UserspaceBackend.__new__(UserspaceBackend)  # no wireguard-go binary needed
        backend.socket_dir, backend._clients, backend._procs = tmp_path, {}, {}
        evil = WgPeer(K2, (EVIL_HOST, 51820), (N("fd00::2/128"),))
        with pytest.raises(WireGuardError) as exc:
            await backend.apply("mesh0", [AddPeer(WgPeer(K1)), AddPeer(evil)])
        assert str(exc.value) == (
            f"setting 2 peer(s) on mesh0: encoding a UAPI set: the endpoint value of peer "
            f"{K2.hex()[:16]} holds characters that would break the key=value line framing; "
            "nothing was written"
        )
        await asyncio.sleep(0.05)
        assert received == []  # not even the lines before the refused one
    finally:
        server.close()
        await server.wait_closed()


def test_kernel_peer_spec_refuses_an_endpoint_that_is_not_a_plain_ip() -> None:
    for host in (EVIL_HOST, "fe80::1%eth0"):
        with pytest.raises(WireGuardError) as exc:
            kernel_peer_spec(AddPeer(WgPeer(K2, (host, 51820))))
        assert str(exc.value) == (
            f"encoding peer {K2.hex()[:16]} for the kernel: its endpoint is not a plain IP "
            "address; nothing was set"
        )
    assert kernel_peer_spec(AddPeer(WgPeer(K2, ("2001:db8::1", 1))))["endpoint_addr"] == (
        "2001:db8::1"
    )
