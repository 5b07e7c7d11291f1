"""meshctl: the operator's command line.

Offline commands (CA and certificates) work on files. Commands that talk to a running meshd go
through `meshd.client` only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import nacl.utils

from meshd import keyfiles
from meshd.ca import CertificateAuthority, describe_certificate
from meshd.client import MeshdClient
from meshd.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from meshd.core.cert import TrustAnchor, check_certificate, decode_certificate
from meshd.core.errors import MeshError, RemoteProtocolError
from meshd.core.identity import SigningKey
from meshd.core.psk import PskChain, PskSecrets, epoch_at

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A command failed in a way the operator can act on; printed without a traceback."""


def _ca_init(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.init(Path(args.dir), args.mesh, force=args.force)
    print(f"created mesh CA for mesh {ca.mesh!r} in {args.dir}")
    print(f"  trust anchor (give to every node): {Path(args.dir) / 'ca.pub'}")
    print(f"  CA key (keep offline):            {Path(args.dir) / 'ca.key'}")
    return EXIT_OK


def _parse_time(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return int(time.mktime(time.strptime(text, "%Y-%m-%d")))
    except ValueError:
        raise CommandError(f"time {text!r}: use Unix seconds or YYYY-MM-DD") from None


def _cert_issue(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.open(Path(args.ca_dir))
    out = Path(args.out_dir) if args.out_dir else Path("nodes") / args.name
    key_path = out / "identity.key"
    if args.public_key:
        identity_key = keyfiles.decode_key(args.public_key, "--public-key")
        identity = None
    else:
        if key_path.exists() and not args.force:
            raise CommandError(f"{key_path} exists; use --force to replace it, or --public-key")
        identity = SigningKey(nacl.utils.random(32))
        identity_key = identity.public
    now = int(time.time())
    not_before = _parse_time(args.not_before) if args.not_before else now - 300
    not_after = _parse_time(args.not_after) if args.not_after else now + args.days * 86400
    cert = ca.issue(
        name=args.name,
        identity_key=identity_key,
        ipv4=args.ipv4,
        ipv4_pool=args.ipv4_pool,
        prefixes=args.prefix,
        roles=args.role,
        not_before=not_before,
        not_after=not_after,
    )
    if identity is not None:
        keyfiles.write_secret(key_path, keyfiles.encode_key(identity.seed), overwrite=args.force)
    keyfiles.ensure_private_dir(out)
    cert_path = out / "node.cert"
    keyfiles.write_public(cert_path, keyfiles.armor(keyfiles.CERT_LABEL, cert.raw))
    keyfiles.write_public(out / "ca.pub", (Path(args.ca_dir) / "ca.pub").read_bytes())
    print(f"issued certificate serial {cert.serial} for {cert.name} ({', '.join(cert.addresses)})")
    print(f"  {cert_path}")
    if identity is not None:
        print(f"  {key_path} (secret)")
    print(f"  {out / 'ca.pub'}")
    return EXIT_OK


def _load_trust(path: str | None, mesh: str) -> TrustAnchor | None:
    if path is None:
        return None
    return TrustAnchor(mesh, (keyfiles.read_key(Path(path), secret=False),))


def _cert_show(args: argparse.Namespace) -> int:
    raw = keyfiles.read_armored(Path(args.file), keyfiles.CERT_LABEL)
    try:
        cert = decode_certificate(raw)
    except RemoteProtocolError as exc:
        raise CommandError(f"certificate {args.file} is invalid: {exc}") from None
    now = time.time()
    info = describe_certificate(cert, now)
    trust = _load_trust(args.ca, cert.mesh)
    if trust is not None:
        try:
            check_certificate(cert, trust, now)
            info["trusted"] = True
        except RemoteProtocolError as exc:
            info["trusted"] = False
            info["error"] = str(exc)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        rows = [
            ("name", info["name"]),
            ("mesh", info["mesh"]),
            ("serial", str(info["serial"])),
            ("identity key", info["identity_key"]),
            ("addresses", ", ".join(info["addresses"])),
            ("prefixes", ", ".join(info["prefixes"]) or "-"),
            ("roles", ", ".join(info["roles"]) or "-"),
            ("valid", f"{_utc(cert.not_before)} .. {_utc(cert.not_after)} ({info['state']})"),
            ("CA key", info["ca_key"]),
        ]
        if "trusted" in info:
            rows.append(("trusted", "yes" if info["trusted"] else f"NO: {info['error']}"))
        for label, value in rows:
            print(f"{label + ':':14}{value}")
    return EXIT_OK if info["state"] == "valid" and info.get("trusted", True) else EXIT_FAIL


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _cert_revoke(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.open(Path(args.ca_dir))
    record = ca.find(args.certificate)
    rev, path = ca.revoke(record, int(time.time()), args.reason)
    print(f"revoked serial {rev.serial} ({record.name}); hand this record to any node:")
    print(f"  {path}")
    print(f"  meshctl revoke apply {path}")
    return EXIT_OK


def _client(args: argparse.Namespace) -> MeshdClient:
    if args.socket:
        return MeshdClient(Path(args.socket))
    try:  # the socket path may be configured; fall back to the default if config is unusable
        return MeshdClient(load_config(DEFAULT_CONFIG_PATH).socket)
    except ConfigError:
        return MeshdClient(Path("/run/meshd/meshd.sock"))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def format_status(status: dict[str, object]) -> str:
    """`meshctl status`: this node on top, then one line per peer, like `wg show` condensed."""
    node = status["node"]
    assert isinstance(node, dict)
    peers = status["peers"]
    assert isinstance(peers, list)
    lines = [
        f"{node['name']}  mesh {node['mesh']}  {' '.join(node['overlay_addresses'])}",
        f"  interface {node['interface']} ({node['backend']}), listening on "
        f"{node['listen_port']}, version {node['version']}, "
        f"{'connected' if status['connected'] else 'NOT CONNECTED'}",
    ]
    warnings = status.get("warnings") or []
    assert isinstance(warnings, list)
    lines += [f"  warning: {w}" for w in warnings]
    routes = node.get("routes") or {}
    assert isinstance(routes, dict)
    lines += [f"  route {prefix} via {r['gateway']}" for prefix, r in sorted(routes.items())]
    refused = node.get("routes_refused") or {}
    assert isinstance(refused, dict)
    lines += [f"  route {prefix} NOT routed: {why}" for prefix, why in sorted(refused.items())]
    if not peers:
        lines.append("  no peers")
        return "\n".join(lines) + "\n"
    header = ("PEER", "OVERLAY", "ENDPOINT", "STATE", "HANDSHAKE", "RTT", "RX / TX")
    rows = [header]
    for p in sorted(peers, key=lambda p: str(p["name"])):
        rtt = f"{p['rtt_ms']:.1f}ms" if p.get("rtt_ms") is not None else "-"
        rows.append((
            str(p["name"]), str(p["overlay_addresses"][0]), str(p.get("endpoint") or "-"),
            "degraded" if p.get("degraded_for_s") is not None else str(p["state"]),
            _age(p.get("handshake_age_s")), rtt,
            f"{_bytes(int(p.get('rx_bytes', 0)))} / {_bytes(int(p.get('tx_bytes', 0)))}",
        ))  # fmt: skip
    for p in sorted(peers, key=lambda p: str(p["name"])):
        if p.get("degraded_for_s") is not None:
            lines.append(
                f"  degraded: {p['name']} for {p['degraded_for_s']:.0f} s: alive through other "
                f"members, but our direct probes fail; {p.get('repair') or 'repairing'}"
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines.append("")
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


def _status(args: argparse.Namespace) -> int:
    status = asyncio.run(_client(args).status())
    print(
        json.dumps(status, indent=2) if args.json else format_status(status),
        end="\n" if args.json else "",
    )
    return EXIT_OK


def _peers(args: argparse.Namespace) -> int:
    peers = asyncio.run(_client(args).peers())
    if args.json:
        print(json.dumps(peers, indent=2))
    else:
        for p in sorted(peers, key=lambda p: str(p["name"])):
            print(
                f"{p['name']}\t{p['state']}\t{' '.join(p['overlay_addresses'])}\t"
                f"{p.get('endpoint') or '-'}"
            )
    return EXIT_OK


def _health(args: argparse.Namespace) -> int:
    health = asyncio.run(_client(args).health())
    if not args.quiet:
        print(("healthy: " if health["healthy"] else "unhealthy: ") + str(health["reason"]))
    return EXIT_OK if health["healthy"] else EXIT_FAIL


def _leave(args: argparse.Namespace) -> int:
    result = asyncio.run(_client(args).leave())
    print(result.get("message", "left the mesh"))
    return EXIT_OK


def _rotate(args: argparse.Namespace) -> int:
    result = asyncio.run(_client(args).rotate())
    print(result.get("message", json.dumps(result)))
    return EXIT_OK


def _revoke_apply(args: argparse.Namespace) -> int:
    record = keyfiles.read_armored(Path(args.file), keyfiles.REVOCATION_LABEL)
    result = asyncio.run(_client(args).apply_revocation(record))
    print(result.get("message", json.dumps(result)))
    return EXIT_OK


def _new_psk(period: int, active_from: int) -> PskChain:
    now = time.time()
    return PskChain(period, epoch_at(now, period), nacl.utils.random(32), active_from)


def _psk_init(args: argparse.Namespace) -> int:
    chain = _new_psk(args.period, 0)
    keyfiles.write_secret(Path(args.file), chain.to_text().encode(), overwrite=args.force)
    print(f"wrote mesh PSK secret {chain.secret_id.hex()} (epoch {args.period} s) to {args.file}; "
          "copy it (0600) to every node and set psk_file")  # fmt: skip
    return EXIT_OK


def _psk_roll(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        secrets = PskSecrets.from_text(path.read_text(), str(path))
    except OSError as exc:
        raise CommandError(f"reading {path}: {exc.strerror}") from None
    at = _parse_time(args.at)
    if at <= time.time():
        raise CommandError("--at: the new secret must become active in the future")
    current = secrets.active(time.time())
    chain = _new_psk(args.period or current.period, at)
    rolled = PskSecrets((*secrets.ratcheted(time.time()).chains, chain))
    keyfiles.write_secret(path, rolled.to_text().encode(), overwrite=True)
    print(f"added mesh PSK secret {chain.secret_id.hex()}, active from "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(at))}, to {path}; copy the file to "
          "every node before then and send meshd SIGHUP")  # fmt: skip
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshctl", description="Control meshd and manage the mesh CA and certificates."
    )
    parser.add_argument(
        "--socket",
        help="meshd API socket (default: from /etc/meshd/meshd.toml, else /run/meshd/meshd.sock)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("status", help="this node and its peers at a glance")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_status)
    p = sub.add_parser("peers", help="list peers")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_peers)
    p = sub.add_parser("health", help="exit 0 only when connected to the mesh (HEALTHCHECK)")
    p.add_argument("-q", "--quiet", action="store_true", help="no output, exit code only")
    p.set_defaults(func=_health)
    p = sub.add_parser("leave", help="leave the mesh gracefully (meshd keeps running)")
    p.set_defaults(func=_leave)
    p = sub.add_parser("rotate", help="rotate this node's WireGuard key now")
    p.set_defaults(func=_rotate)
    revoke = sub.add_parser("revoke", help="hand a revocation record to the running meshd")
    revoke_sub = revoke.add_subparsers(dest="revoke_command", metavar="ACTION", required=True)
    p = revoke_sub.add_parser("apply", help="apply a revocation record (spreads to the mesh)")
    p.add_argument("file", help="revocation file from `meshctl cert revoke`")
    p.set_defaults(func=_revoke_apply)

    psk = sub.add_parser("psk", help="mesh PSK secret (offline)")
    psk_sub = psk.add_subparsers(dest="psk_command", metavar="ACTION", required=True)
    p = psk_sub.add_parser("init", help="create a mesh PSK secret file (0600)")
    p.add_argument("file", help="secret file to write (psk_file in meshd.toml)")
    p.add_argument(
        "--period",
        type=int,
        default=86400,
        help="epoch length in seconds: pair PSKs change this often (default 86400)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=_psk_init)
    p = psk_sub.add_parser("roll", help="add a new secret that replaces the current one at --at")
    p.add_argument("file", help="the current secret file; rewritten with both secrets")
    p.add_argument("--at", required=True, help="activation time (Unix seconds or YYYY-MM-DD)")
    p.add_argument("--period", type=int, default=0, help="epoch length (default: as now)")
    p.set_defaults(func=_psk_roll)

    ca = sub.add_parser("ca", help="mesh certificate authority (offline)")
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    p = ca_sub.add_parser("init", help="create a new mesh CA key pair")
    p.add_argument("--mesh", required=True, help="mesh name (a-z, 0-9, '-'); seeds the /48")
    p.add_argument("--dir", default="ca", help="CA directory (default: ./ca)")
    p.add_argument("--force", action="store_true", help="replace an existing CA key")
    p.set_defaults(func=_ca_init)

    cert = sub.add_parser("cert", help="node certificates (offline)")
    cert_sub = cert.add_subparsers(dest="cert_command", metavar="ACTION", required=True)
    p = cert_sub.add_parser("issue", help="issue a node certificate (and identity key)")
    p.add_argument("--name", required=True, help="node name, DNS-style")
    p.add_argument("--ca-dir", default="ca", help="CA directory (default: ./ca)")
    p.add_argument(
        "--out-dir",
        help="where to write node.cert, identity.key and ca.pub (default: ./nodes/NAME)",
    )
    p.add_argument(
        "--public-key", help="certify this identity public key (base64) instead of making a new key"
    )
    p.add_argument(
        "--ipv4",
        metavar="ADDR|auto",
        help="grant an IPv4 overlay address: an "
        "address, or 'auto' for a free one from --ipv4-pool (default: IPv6 only)",
    )
    p.add_argument(
        "--ipv4-pool",
        default="100.64.0.0/10",
        help="pool for --ipv4 auto (default: 100.64.0.0/10, RFC 6598 shared space)",
    )
    p.add_argument(
        "--prefix",
        action="append",
        default=[],
        help="a prefix the node may "
        "advertise (repeatable): subnet, NAT64 prefix, ::/0 or 0.0.0.0/0 for exit",
    )
    p.add_argument("--role", action="append", default=[], help="a role (repeatable)")
    p.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    p.add_argument(
        "--not-before",
        help="start of validity (Unix seconds or YYYY-MM-DD; default: now - 5 min for clock skew)",
    )
    p.add_argument("--not-after", help="end of validity (overrides --days)")
    p.add_argument("--force", action="store_true", help="replace an existing identity key")
    p.set_defaults(func=_cert_issue)
    p = cert_sub.add_parser("show", help="print and check a certificate")
    p.add_argument("file", help="certificate file (node.cert)")
    p.add_argument("--ca", help="CA public key file: also check the certificate against it")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cert_show)
    p = cert_sub.add_parser("revoke", help="issue a CA-signed revocation record")
    p.add_argument("certificate", help="serial number or node name (from the CA's ledger)")
    p.add_argument("--ca-dir", default="ca", help="CA directory (default: ./ca)")
    p.add_argument("--reason", default="", help="free text, at most 128 characters")
    p.set_defaults(func=_cert_revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CommandError, MeshError) as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
