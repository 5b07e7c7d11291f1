"""meshd configuration: one TOML file plus `MESHD_<FIELD>` environment overrides.

Every field is declared once, below, with its type, default, unit and documentation; the README's
configuration table is generated from these declarations (`python -m meshd.config --markdown`)
and a test keeps the two identical. Bad configuration stops start-up with a message that names
the field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd.core.endpoints import endpoint_refusal
from meshd.core.identity import check_mesh_name

ENV_PREFIX = "MESHD_"
DEFAULT_CONFIG_PATH = Path("/etc/meshd/meshd.toml")


class ConfigError(Exception):
    """Configuration is unusable; the message names the field and the source."""


def _f(default: Any, doc: str, unit: str = "") -> Any:
    meta = {"doc": doc, "unit": unit}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    mesh: str = _f("", "Mesh name; must equal the mesh in the node certificate. Required.")
    ca_public_key: Path = _f(
        Path("/etc/meshd/ca.pub"), "File with the mesh CA public key (base64), the trust anchor."
    )
    certificate: Path = _f(Path("/etc/meshd/node.cert"), "This node's certificate file.")
    identity_key: Path = _f(
        Path("/etc/meshd/identity.key"), "This node's Ed25519 identity key file (0600)."
    )
    state_dir: Path = _f(
        Path("/var/lib/meshd"),
        "Persistent state: WireGuard key, version, known peers, revocations. Created 0700.",
    )
    socket: Path = _f(Path("/run/meshd/meshd.sock"), "Unix socket of the local API (0660).")
    interface: str = _f("mesh0", "WireGuard interface name.")
    listen_port: int = _f(51820, "WireGuard UDP port on the underlay.", "port")
    meshd_port: int = _f(
        51821, "meshd's UDP port: join requests on the underlay, gossip inside the tunnel.", "port"
    )
    seeds: list[str] = _f(
        [],
        "Seeds to join through, `host:port` (host may be a DNS name); "
        "empty for the first node. Re-resolved periodically.",
    )
    endpoints: list[str] = _f(
        [],
        "Underlay endpoints to announce, `ip:port`; empty = the "
        "addresses of this host's interfaces with `listen_port`, except tunnels "
        "(another VPN's or WireGuard interface).",
    )
    backend: str = _f(
        "auto",
        "WireGuard backend: `auto` (kernel if the module exists, else "
        "userspace), `kernel`, or `userspace` (wireguard-go).",
    )
    wireguard_go: str = _f("wireguard-go", "wireguard-go binary for the userspace backend.")
    wireguard_run_dir: Path = _f(
        Path("/var/run/wireguard"), "Directory of wireguard-go's UAPI sockets."
    )
    mtu: int = _f(
        1420, "MTU of the mesh interface (1420 fits IPv6 underlays of MTU 1500).", "bytes"
    )
    persistent_keepalive: int = _f(
        25,
        "WireGuard persistent keepalive towards every peer; keeps NAT mappings open. 0 disables.",
        "s",
    )
    advertise_prefixes: list[str] = _f(
        [], "Extra prefixes to advertise; each must be granted by the certificate."
    )
    accept_routes: list[str] = _f(
        [],
        "Prefixes advertised by gateways that this node routes through the mesh (anything "
        'inside a listed prefix), or `["all"]`; default routes are governed by `use_exit` '
        "alone. Empty: none, a node opts in.",
    )
    use_exit: bool = _f(
        False,
        "Send default traffic (`::/0`, `0.0.0.0/0`) through an exit gateway of the mesh "
        "(policy routing; the underlay and local subnets stay direct).",
    )
    egress_nat: bool = _f(
        False,
        "Gateway: masquerade mesh traffic leaving this node (NAT66/NAT44) in nftables table "
        "`inet meshd`; egress only, no new connection comes back in.",
    )
    egress_bridges: list[str] = _f(
        [],
        "Local bridges (containers, e.g. a ULA-only podman network) whose traffic is "
        "masqueraded wherever it leaves (into the mesh too); egress only.",
    )
    protected_ranges: list[str] = _f(
        [],
        "Gateway: prefixes (e.g. the management network) that mesh traffic may not reach "
        "through this node.",
    )
    nat64: bool = _f(
        False,
        "Gateway: run tayga as NAT64 for `nat64_prefix` (which must be in `advertise_prefixes`).",
    )
    nat64_prefix: str = _f("64:ff9b::/96", "The NAT64 prefix (RFC 6052 well-known by default).")
    nat64_pool: str = _f(
        "192.168.255.0/24",
        "IPv4 pool tayga maps clients into, masqueraded to this node's IPv4 address.",
    )
    tayga: str = _f("/usr/sbin/tayga", "tayga binary for `nat64`.")
    membership: str = _f(
        "lan",
        "Membership timing preset: `lan` (default) or `local` (fast "
        "timers for tests and single-host labs).",
    )
    keep_interface: bool = _f(
        False,
        "Leave the interface, its peers and routes in place on exit; the next meshd adopts "
        "them. A SIGTERM still leaves the mesh, so the others drop this node until it "
        "rejoins (docs/dataplane.md). Kernel backend only: a wireguard-go interface ends "
        "with its process.",
    )
    psk_file: str = _f(
        "",
        "Mesh PSK secret file (0600, from `meshctl psk init`); empty = no preshared keys. Every "
        "node of a mesh needs the same secret: a node without it is refused. meshd advances the "
        "secret's ratchet in this file (see docs/keys.md); SIGHUP re-reads it.",
    )
    wg_key_rotation_s: int = _f(
        86400,
        "Rotate this node's WireGuard key this often (announced ahead, see docs/keys.md); "
        "0 = only on `meshctl rotate`.",
        "s",
    )
    log_level: str = _f("info", "Log level: debug, info, warning, error.")

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        try:
            check_mesh_name(self.mesh)
        except Exception as exc:
            raise ConfigError(f"mesh: {exc}" if self.mesh else "mesh: required") from None
        for name in ("listen_port", "meshd_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise ConfigError(f"{name}: {port} is not a port (1-65535)")
        if self.listen_port == self.meshd_port:
            raise ConfigError("meshd_port: must differ from listen_port")
        if not 1 <= len(self.interface) <= 15 or "/" in self.interface or " " in self.interface:
            raise ConfigError(f"interface: {self.interface!r} is not a valid interface name")
        if self.backend not in ("auto", "kernel", "userspace"):
            raise ConfigError(f"backend: {self.backend!r}; use auto, kernel or userspace")
        if not 1280 <= self.mtu <= 9000:
            raise ConfigError(f"mtu: {self.mtu} outside 1280-9000 (IPv6 needs at least 1280)")
        if not 0 <= self.persistent_keepalive <= 65535:
            raise ConfigError("persistent_keepalive: must be 0-65535 seconds")
        if self.wg_key_rotation_s != 0 and self.wg_key_rotation_s < 600:
            raise ConfigError(
                "wg_key_rotation_s: at least 600 seconds (or 0 for rotation on demand only)"
            )
        if self.membership not in ("lan", "local"):
            raise ConfigError(f"membership: {self.membership!r}; use lan or local")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level: {self.log_level!r}; use debug, info, warning, error")
        for seed in self.seeds:
            split_host_port(seed, "seeds")
        for ep in self.endpoints:
            host, _ = split_host_port(ep, "endpoints")
            try:
                canonical = str(ipaddress.ip_address(host))
            except ValueError:
                raise ConfigError(f"endpoints: {ep!r}: host must be an IP address") from None
            # Peers refuse an announcement with such an endpoint (meshd.core.endpoints).
            if (why := endpoint_refusal(canonical)) is not None:
                raise ConfigError(f"endpoints: {ep!r}: cannot be announced, the host {why}")
        for prefix in self.advertise_prefixes:
            try:
                ipaddress.ip_network(prefix, strict=True)
            except ValueError as exc:
                raise ConfigError(f"advertise_prefixes: {prefix!r}: {exc}") from None
        if self.accept_routes != ["all"]:
            for prefix in self.accept_routes:
                try:
                    ipaddress.ip_network(prefix, strict=True)
                except ValueError as exc:
                    msg = f'{prefix!r}: {exc} (or use ["all"] alone)'
                    raise ConfigError(f"accept_routes: {msg}") from None
        for prefix in self.protected_ranges:
            try:
                ipaddress.ip_network(prefix, strict=True)
            except ValueError as exc:
                raise ConfigError(f"protected_ranges: {prefix!r}: {exc}") from None
        for bridge in self.egress_bridges:
            if not 1 <= len(bridge) <= 15 or "/" in bridge or " " in bridge:
                raise ConfigError(f"egress_bridges: {bridge!r} is not a valid interface name")
        try:
            nat64_prefix = ipaddress.ip_network(self.nat64_prefix, strict=True)
            if nat64_prefix.version != 6 or nat64_prefix.prefixlen != 96:
                raise ValueError("tayga needs an IPv6 /96")
        except ValueError as exc:
            raise ConfigError(f"nat64_prefix: {self.nat64_prefix!r}: {exc}") from None
        try:
            pool = ipaddress.ip_network(self.nat64_pool, strict=True)
            if pool.version != 4 or pool.num_addresses < 4:
                raise ValueError("an IPv4 prefix of at least 4 addresses")
        except ValueError as exc:
            raise ConfigError(f"nat64_pool: {self.nat64_pool!r}: {exc}") from None
        if self.nat64 and str(nat64_prefix) not in self.advertise_prefixes:
            raise ConfigError(
                f"nat64: nat64_prefix {nat64_prefix} must also be in advertise_prefixes"
            )


def split_host_port(text: str, field_name: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `v6` literal with port: returns (host, port)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
    else:
        host, sep, rest = text.rpartition(":")
    if not sep or not host or not rest.isdigit() or not 1 <= int(rest) <= 65535:
        raise ConfigError(f"{field_name}: {text!r} is not host:port (IPv6 as [addr]:port)")
    return host, int(rest)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = FIELDS[name].type
    try:
        if kind in ("int", int):
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise TypeError
            return int(value)
        if kind in ("bool", bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
                return value.lower() in ("1", "true", "yes")
            raise TypeError
        if kind in ("Path", Path):
            if not isinstance(value, str) or not value:
                raise TypeError
            return Path(value)
        if kind in ("list[str]",):
            if isinstance(value, str):  # environment: comma-separated
                return [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return list(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} from {source} is not a valid {kind}") from None


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if given; a missing default path is allowed when the environment
    carries the configuration, as in containers), apply `MESHD_*` overrides, validate."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            if path != DEFAULT_CONFIG_PATH:
                raise ConfigError(f"config file {path}: not found") from None
            data = {}
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        for key, value in data.items():
            if key not in FIELDS:
                raise ConfigError(f"{key}: unknown field in {path} (see `meshd --help-config`)")
            values[key] = _coerce(key, value, str(path))
    for env_key, value in environ.items():
        if not env_key.startswith(ENV_PREFIX) or env_key == "MESHD_CONFIG":
            continue
        key = env_key[len(ENV_PREFIX) :].lower()
        if key not in FIELDS:
            raise ConfigError(f"{env_key}: unknown setting (see `meshd --help-config`)")
        values[key] = _coerce(key, value, env_key)
    config = Config(**values)
    config.validate()
    return config


def markdown_table() -> str:
    """The configuration reference as a Markdown table (README section)."""
    lines = ["| field | env | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(Config):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = (
            "" if default == "" else f"`{default}`" if not isinstance(default, list) else ("`[]`")
        )
        if isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        unit = f" ({f.metadata['unit']})" if f.metadata["unit"] else ""
        env = f"`{ENV_PREFIX}{f.name.upper()}`"
        lines.append(f"| `{f.name}` | {env} | {shown} | {f.metadata['doc']}{unit} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(markdown_table(), end="")
    else:
        print("usage: python -m meshd.config --markdown", file=sys.stderr)
        sys.exit(2)
