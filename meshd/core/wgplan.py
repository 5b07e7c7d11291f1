"""Desired and actual state of the mesh interface, and the plan that turns one into the other.

Theory of operation
-------------------
The data plane is applied declaratively, as wesher does: the daemon computes the *whole* desired
state (`MeshInterface`: WireGuard device, interface addresses, MTU, routes), an adapter reads the
actual state into the same type, and `plan(desired, actual)` lists the operations that make the
actual state equal to the desired one. Applying a plan and planning again gives `[]` (idempotent);
applying it twice is harmless because every operation is a "make it so" (replace, not add).

What is compared, and why:

* Peers are keyed by public key. A peer is updated when its AllowedIPs, preshared key or keepalive
  differ, or when the desired endpoint is set and differs: a desired endpoint of `None` means
  "let WireGuard learn it" (roaming), so a learned endpoint is never fought.
* Addresses: link-local IPv6 addresses are the kernel's, never planned.
* Routes: only routes carrying meshd's route protocol number are read as actual state (the
  adapter filters them), so routes someone else made are never removed.

The module is pure (no I/O, no clock); the adapters in `meshd.adapters` execute the operations.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
from dataclasses import dataclass, field

from meshd.core.errors import LocalProtocolError

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface

KEY_LEN = 32

#: Route protocol number (rtm_protocol) of every route meshd installs. Not in iproute2's
#: rt_protos list (0-18, 42, 99, 186-192 are taken); 109 is ASCII 'm'. meshd dumps routes by this
#: number and never touches a route carrying another one. Changing it orphans deployed routes.
MESHD_ROUTE_PROTO = 109

#: Firewall mark on WireGuard's own UDP packets (and meshd's underlay socket): with an exit
#: route, policy rules send unmarked traffic to `MESHD_EXIT_TABLE` and marked traffic never, so
#: the tunnel's packets cannot enter the tunnel (the wg-quick scheme, docs/egress.md).
MESHD_FWMARK = 0x6D65
#: Routing table holding meshd's default (/0) routes via the mesh interface.
MESHD_EXIT_TABLE = 0x6D65

#: WireGuard's recommended MTU for a 1500-byte underlay (IPv6 outer header + 32 bytes overhead).
DEFAULT_MTU = 1420


def as_prefix(p: object) -> Prefix:
    """A prefix from a network object (kept as is: parsing 1,000s of them costs) or a string."""
    if isinstance(p, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return p
    return ipaddress.ip_network(p, strict=False)  # type: ignore[arg-type]


def _prefix_key(p: Prefix) -> tuple[int, int, int]:
    return (p.version, int(p.network_address), p.prefixlen)


def _address_key(a: Address) -> tuple[int, int, int]:
    return (a.version, int(a.ip), a.network.prefixlen)


def normalize_host(host: str) -> str:
    """An endpoint host as WireGuard reports it: a compressed IP literal."""
    try:
        return ipaddress.ip_address(host.strip("[]")).compressed
    except ValueError as exc:
        raise LocalProtocolError(f"endpoint host {host!r} is not an IP address") from exc


def clamp_private_key(key: bytes) -> bytes:
    """X25519 clamping (RFC 7748 section 5): clear bits 0-2 and 255, set bit 254."""
    k = bytearray(key)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


@dataclass(frozen=True)
class WgPeer:
    """One WireGuard peer as configured (not its runtime statistics)."""

    public_key: bytes
    """The peer's X25519 public key (32 bytes)."""
    endpoint: tuple[str, int] | None = None
    """(IP literal, UDP port) to send to, or None to wait for the peer to reach us."""
    allowed_ips: tuple[Prefix, ...] = ()
    """Prefixes routed to and accepted from this peer; kept sorted so equality ignores order."""
    preshared_key: bytes | None = field(default=None, repr=False)
    """Per-pair symmetric key (32 bytes) mixed into the handshake, or None. Never printed."""
    persistent_keepalive: int = 0
    """Seconds between keepalives (0 = off); keeps NAT mappings open."""

    def __post_init__(self) -> None:
        if len(self.public_key) != KEY_LEN:
            raise LocalProtocolError(f"a peer public key is {KEY_LEN} bytes")
        if self.preshared_key is not None and len(self.preshared_key) != KEY_LEN:
            raise LocalProtocolError(f"a preshared key is {KEY_LEN} bytes")
        if not 0 <= self.persistent_keepalive <= 65535:
            raise LocalProtocolError("persistent keepalive is 0-65535 seconds")
        if self.endpoint is not None:
            host, port = self.endpoint
            if not 1 <= port <= 65535:
                raise LocalProtocolError(f"endpoint port {port} out of range")
            object.__setattr__(self, "endpoint", (normalize_host(host), port))
        prefixes = {as_prefix(p) for p in self.allowed_ips}
        object.__setattr__(self, "allowed_ips", tuple(sorted(prefixes, key=_prefix_key)))

    def same_config(self, actual: WgPeer) -> bool:
        """True when `actual` needs no update to become this peer (see the module docstring
        about endpoints)."""
        return (
            self.allowed_ips == actual.allowed_ips
            and self.preshared_key == actual.preshared_key
            and self.persistent_keepalive == actual.persistent_keepalive
            and (self.endpoint is None or self.endpoint == actual.endpoint)
        )


@dataclass(frozen=True)
class WgDevice:
    """The WireGuard device: its own key, port and the full peer set."""

    private_key: bytes = field(repr=False)
    """X25519 private key (32 bytes). Never printed."""
    listen_port: int
    """UDP port WireGuard listens on."""
    peers: tuple[WgPeer, ...] = ()
    """All peers, sorted by public key (duplicates are a caller bug)."""
    fwmark: int = 0
    """Firewall mark of WireGuard's UDP packets (0 = none); see MESHD_FWMARK."""

    def __post_init__(self) -> None:
        if len(self.private_key) != KEY_LEN:
            raise LocalProtocolError(f"a WireGuard private key is {KEY_LEN} bytes")
        if not 0 <= self.listen_port <= 65535:
            raise LocalProtocolError(f"listen port {self.listen_port} out of range")
        # WireGuard (kernel and wireguard-go) stores and reports the *clamped* X25519 scalar
        # (RFC 7748 section 5); clamping here keeps desired == actual. The public key is the same.
        object.__setattr__(self, "private_key", clamp_private_key(self.private_key))
        peers = tuple(sorted(self.peers, key=lambda p: p.public_key))
        for a, b in itertools.pairwise(peers):
            if a.public_key == b.public_key:
                raise LocalProtocolError(f"peer {a.public_key.hex()[:16]} listed twice")
        object.__setattr__(self, "peers", peers)

    def peer_map(self) -> dict[bytes, WgPeer]:
        return {p.public_key: p for p in self.peers}


@dataclass(frozen=True)
class MeshInterface:
    """Everything meshd owns about its interface: the state `plan` converges."""

    name: str
    """Interface name (at most 15 characters), e.g. "mesh0"."""
    device: WgDevice
    """WireGuard configuration."""
    addresses: tuple[Address, ...] = ()
    """Overlay addresses with prefix length, e.g. fd12:3456:789a::1/48 (sorted)."""
    mtu: int = DEFAULT_MTU
    """Link MTU."""
    up: bool = True
    """Administrative state of the link."""
    routes: tuple[Prefix, ...] = ()
    """Routes via this interface that meshd owns (sorted); see `with_peer_routes`. A default
    route (/0) is kept in MESHD_EXIT_TABLE behind policy rules, the others in the main table."""

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= 15:
            raise LocalProtocolError(f"interface name {self.name!r}: 1-15 characters")
        addresses = {ipaddress.ip_interface(a) for a in self.addresses}
        link_local = [a for a in addresses if a.ip.is_link_local and a.version == 6]
        if link_local:
            raise LocalProtocolError(f"link-local address {link_local[0]} is the kernel's")
        object.__setattr__(self, "addresses", tuple(sorted(addresses, key=_address_key)))
        routes = {as_prefix(r) for r in self.routes}
        object.__setattr__(self, "routes", tuple(sorted(routes, key=_prefix_key)))

    @classmethod
    def with_peer_routes(
        cls,
        name: str,
        device: WgDevice,
        addresses: tuple[Address, ...] = (),
        mtu: int = DEFAULT_MTU,
        extra_routes: tuple[Prefix, ...] = (),
    ) -> MeshInterface:
        """The usual desired state: one explicit route per AllowedIPs prefix of every peer
        (WireGuard picks the peer, the kernel must first send the packet to the interface)."""
        routes = {p for peer in device.peers for p in peer.allowed_ips} | set(extra_routes)
        return cls(name, device, addresses, mtu, True, tuple(routes))


# --- operations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateInterface:
    """Create the WireGuard interface (or start wireguard-go for it)."""

    name: str


@dataclass(frozen=True)
class SetPrivateKey:
    private_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "private_key", clamp_private_key(self.private_key))


@dataclass(frozen=True)
class SetListenPort:
    port: int


@dataclass(frozen=True)
class SetFwmark:
    fwmark: int


@dataclass(frozen=True)
class AddPeer:
    peer: WgPeer


@dataclass(frozen=True)
class UpdatePeer:
    """Replace a peer's endpoint (when desired), AllowedIPs, PSK and keepalive."""

    peer: WgPeer
    allowed_ips_changed: bool = True
    """False: leave AllowedIPs alone. Replacing them is not atomic in wireguard-go (remove all,
    then insert each), so a PSK change would otherwise open a moment without a route."""


@dataclass(frozen=True)
class RemovePeer:
    public_key: bytes


@dataclass(frozen=True)
class SetMtu:
    mtu: int


@dataclass(frozen=True)
class SetLinkUp:
    up: bool


@dataclass(frozen=True)
class AddAddress:
    address: Address


@dataclass(frozen=True)
class RemoveAddress:
    address: Address


@dataclass(frozen=True)
class AddRoute:
    prefix: Prefix


@dataclass(frozen=True)
class RemoveRoute:
    prefix: Prefix


WgOp = SetPrivateKey | SetListenPort | SetFwmark | AddPeer | UpdatePeer | RemovePeer
"""Operations a WireGuard backend executes."""
LinkOp = SetMtu | SetLinkUp | AddAddress | RemoveAddress | AddRoute | RemoveRoute
"""Operations the netlink side executes."""
Op = CreateInterface | WgOp | LinkOp


def plan_device(desired: WgDevice, actual: WgDevice | None) -> list[WgOp]:
    """WireGuard operations turning `actual` (None: a fresh device) into `desired`."""
    ops: list[WgOp] = []
    if actual is None or actual.private_key != desired.private_key:
        ops.append(SetPrivateKey(desired.private_key))
    if actual is None or actual.listen_port != desired.listen_port:
        ops.append(SetListenPort(desired.listen_port))
    if (actual.fwmark if actual is not None else 0) != desired.fwmark:
        ops.append(SetFwmark(desired.fwmark))
    have = actual.peer_map() if actual is not None else {}
    want = desired.peer_map()
    for key, peer in sorted(want.items()):
        if key not in have:
            ops.append(AddPeer(peer))
        elif not peer.same_config(have[key]):
            if have[key].endpoint is None and peer.endpoint is not None:
                # A peer that never had an endpoint has no session to lose, but WireGuard
                # already failed a handshake for it and waits REKEY_TIMEOUT (5 s) before the
                # next one. Re-creating the peer lets the first packet start a handshake now.
                ops += [RemovePeer(key), AddPeer(peer)]
            else:
                ops.append(UpdatePeer(peer, peer.allowed_ips != have[key].allowed_ips))
    # Removals last: a peer replacing another (a rotated key) takes over its AllowedIPs when it
    # is added, prefix by prefix, so no packet meets a moment without a route.
    ops.extend(RemovePeer(k) for k in sorted(have.keys() - want.keys()))
    return ops


def resend_endpoints(desired: WgDevice, actual: WgDevice | None, ops: list[Op]) -> list[WgOp]:
    """An endpoint update, to the same address, of every peer that has one and that `ops` do
    not already add or update. After our own underlay address changed, an implementation may
    keep sending with the source address it cached for the peer (wireguard-go over IPv4 did:
    behind a new NAT nothing left the host until the endpoint was set again); setting the
    endpoint drops the cache. The desired endpoint where there is one, else the actual one."""
    if actual is None:
        return []
    touched = {op.peer.public_key for op in ops if isinstance(op, AddPeer | UpdatePeer)}
    have = actual.peer_map()
    out: list[WgOp] = []
    for key, peer in sorted(desired.peer_map().items()):
        current = have.get(key)
        if key in touched or current is None:
            continue
        endpoint = peer.endpoint or current.endpoint
        if endpoint is not None:
            out.append(UpdatePeer(dataclasses.replace(peer, endpoint=endpoint), False))
    return out


def restart_peers(
    desired: WgDevice, actual: WgDevice | None, ops: list[Op], keys: set[bytes]
) -> list[WgOp]:
    """Re-create the peers in `keys` that WireGuard has with an endpoint and that `ops` do not
    already add, change or remove: a new peer starts a handshake at once (persistent
    keepalive, or the first packet), where the old one waits REKEY_TIMEOUT (5 s) after an
    initiation that went unanswered (`meshd.core.endpoints.handshake_restart_in`)."""
    if actual is None:
        return []
    touched = {op.peer.public_key for op in ops if isinstance(op, AddPeer | UpdatePeer)}
    touched |= {op.public_key for op in ops if isinstance(op, RemovePeer)}
    have = actual.peer_map()
    out: list[WgOp] = []
    for key, peer in sorted(desired.peer_map().items()):
        current = have.get(key)
        if key in keys and key not in touched and current is not None and current.endpoint:
            endpoint = peer.endpoint or current.endpoint  # the one WireGuard has, if not desired
            out += [RemovePeer(key), AddPeer(dataclasses.replace(peer, endpoint=endpoint))]
    return out


def plan(desired: MeshInterface, actual: MeshInterface | None) -> list[Op]:
    """Operations turning `actual` (None: the interface does not exist) into `desired`, in the
    order they must run: interface, WireGuard, MTU, addresses, link up, then routes (the kernel
    refuses a route via a link that is down)."""
    if actual is not None and actual.name != desired.name:
        raise LocalProtocolError(f"planning {desired.name} against {actual.name}")
    ops: list[Op] = []
    if actual is None:
        ops.append(CreateInterface(desired.name))
    ops.extend(plan_device(desired.device, actual.device if actual else None))
    if actual is None or actual.mtu != desired.mtu:
        ops.append(SetMtu(desired.mtu))
    have_addr = set(actual.addresses) if actual else set()
    want_addr = set(desired.addresses)
    ops.extend(RemoveAddress(a) for a in sorted(have_addr - want_addr, key=_address_key))
    ops.extend(AddAddress(a) for a in sorted(want_addr - have_addr, key=_address_key))
    if actual is None or actual.up != desired.up:
        ops.append(SetLinkUp(desired.up))
    have_routes = set(actual.routes) if actual else set()
    want_routes = set(desired.routes) if desired.up else set()
    ops.extend(RemoveRoute(r) for r in sorted(have_routes - want_routes, key=_prefix_key))
    ops.extend(AddRoute(r) for r in sorted(want_routes - have_routes, key=_prefix_key))
    return ops
