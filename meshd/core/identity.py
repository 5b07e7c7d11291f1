"""Keys and the derivations a deployed mesh depends on.

Everything here is deterministic: keys are built from seeds that the caller supplies (the core
never reads the OS random source). The derivations of the mesh prefix and of overlay addresses
are pinned by golden tests: changing one re-addresses every node of every deployed mesh.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from dataclasses import dataclass

import nacl.exceptions
import nacl.public
import nacl.signing

from meshd.core.errors import LocalProtocolError

KEY_LEN = 32
SIGNATURE_LEN = 64

_MESH_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")


def check_mesh_name(mesh: str) -> str:
    """A mesh name is 1-32 characters of a-z, 0-9 and inner '-': it seeds the mesh prefix."""
    if not _MESH_NAME.match(mesh):
        raise LocalProtocolError(
            f"mesh name {mesh!r}: use 1-32 characters a-z, 0-9 and '-' (not at either end)"
        )
    return mesh


def check_node_name(name: str) -> str:
    """A node name is a DNS-style name: 1-63 characters of a-z, 0-9, '-' and '.'."""
    if not _NODE_NAME.match(name):
        raise LocalProtocolError(
            f"node name {name!r}: use 1-63 characters a-z, 0-9, '-' and '.' (not at either end)"
        )
    return name


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 key pair (mesh CA or node identity), built from its 32-byte seed."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != KEY_LEN:
            raise LocalProtocolError(f"an Ed25519 seed is {KEY_LEN} bytes, got {len(self.seed)}")

    def __repr__(self) -> str:  # never print the secret
        return f"SigningKey(public={self.public.hex()[:16]}...)"

    @functools.cached_property
    def public(self) -> bytes:
        # Cached: deriving it costs an Ed25519 key generation, and the daemon asks per peer.
        return bytes(nacl.signing.SigningKey(self.seed).verify_key)

    def sign(self, domain: bytes, message: bytes) -> bytes:
        """Signature over `domain || message`; the domain keeps signatures of one kind of object
        from being valid for another."""
        return nacl.signing.SigningKey(self.seed).sign(domain + message).signature


def verify_signature(public: bytes, domain: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public).verify(domain + message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class WireGuardKey:
    """A WireGuard static key pair (X25519). Rotates independently of the identity key."""

    private: bytes

    def __post_init__(self) -> None:
        if len(self.private) != KEY_LEN:
            raise LocalProtocolError(f"a WireGuard private key is {KEY_LEN} bytes")

    def __repr__(self) -> str:
        return f"WireGuardKey(public={self.public.hex()[:16]}...)"

    @functools.cached_property
    def public(self) -> bytes:
        return bytes(nacl.public.PrivateKey(self.private).public_key)  # an X25519: cached


def _digest(data: bytes, person: bytes, size: int) -> bytes:
    return hashlib.blake2b(data, digest_size=size, person=person).digest()


def mesh_prefix(mesh: str) -> ipaddress.IPv6Network:
    """The mesh's IPv6 ULA /48: fd00::/8 plus a 40-bit global ID taken from the mesh name.

    RFC 4193 section 3.2 wants a random global ID; deriving it from the name instead lets every
    node compute the prefix with no coordination, and keeps 40 bits of spread between meshes.
    """
    check_mesh_name(mesh)
    global_id = _digest(mesh.encode(), b"meshd-ula-v1", 5)
    packed = b"\xfd" + global_id + bytes(10)
    return ipaddress.IPv6Network((packed, 48))


def overlay_ipv6(mesh: str, identity_key: bytes) -> ipaddress.IPv6Address:
    """A node's overlay IPv6 address: the mesh /48, subnet 0, and a 64-bit interface ID from the
    identity key. Collisions need ~2^32 nodes (birthday bound), so no allocation is needed."""
    if len(identity_key) != KEY_LEN:
        raise LocalProtocolError("an identity key is 32 bytes")
    prefix = mesh_prefix(mesh).network_address.packed[:6]
    iid = _digest(identity_key, b"meshd-iid-v1", 8)
    return ipaddress.IPv6Address(prefix + bytes(2) + iid)


def pool_ipv4(
    pool: ipaddress.IPv4Network, identity_key: bytes, attempt: int = 0
) -> ipaddress.IPv4Address:
    """The `attempt`-th candidate IPv4 address of a node in `pool` (network and broadcast
    addresses excluded). Whoever hands out addresses (the CA's ledger) moves to the next attempt
    on collision; the sequence is the same everywhere, so the choice is reproducible."""
    hosts = pool.num_addresses - 2
    if hosts < 1:
        raise LocalProtocolError(f"IPv4 pool {pool} has no host addresses")
    h = _digest(identity_key + attempt.to_bytes(4, "big"), b"meshd-v4pool-v1", 8)
    offset = 1 + int.from_bytes(h, "big") % hosts
    return pool.network_address + offset


def key_id(public: bytes) -> str:
    """Short printable ID of a public key (first 8 bytes, hex) for logs and tables."""
    return public[:8].hex()
