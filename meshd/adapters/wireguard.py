"""WireGuard backends: kernel (generic netlink) and userspace (supervised wireguard-go + UAPI).

Both implement `WireGuardBackend`: create the device, read it (configuration plus per-peer
handshake time and byte counters), apply `WgOp`s from `meshd.core.wgplan`, destroy it.
Addresses, MTU, link state and routes are not the backend's business: the reconciler does those
over rtnetlink for both backends.

`select_backend("auto")` picks the kernel module when the WireGuard generic-netlink family
exists, else wireguard-go. No secret (private key, PSK) ever goes into a log line or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import os
import re
import shutil
import signal
import time
from base64 import b64decode, b64encode
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from meshd.core.errors import MeshError
from meshd.core.wgplan import (
    AddPeer,
    Prefix,
    RemovePeer,
    SetFwmark,
    SetListenPort,
    SetPrivateKey,
    UpdatePeer,
    WgDevice,
    WgOp,
    WgPeer,
)

log = logging.getLogger(__name__)

DEFAULT_SOCKET_DIR = Path("/var/run/wireguard")
ZERO_KEY = bytes(32)


class WireGuardError(MeshError):
    """A WireGuard operation failed; the message names the verb and the interface."""


class BackendUnavailable(WireGuardError):
    """The chosen backend cannot run on this machine (no module, no binary)."""


@dataclass(frozen=True)
class PeerStatus:
    """A peer as the backend reports it."""

    peer: WgPeer
    """Its configuration (endpoint as currently used, possibly learned by roaming)."""
    last_handshake: float | None
    """Unix time of the last completed handshake, None if never."""
    rx_bytes: int
    """Bytes received from this peer."""
    tx_bytes: int
    """Bytes sent to this peer."""


@dataclass(frozen=True)
class DeviceStatus:
    """The device as the backend reports it."""

    device: WgDevice
    """Configuration (private key clamped; all-zero when none is set yet)."""
    peers: dict[bytes, PeerStatus] = field(default_factory=dict)
    """Runtime status by public key."""


class WireGuardBackend(Protocol):
    kind: str
    """"kernel" or "userspace"."""
    on_exit: Callable[[str], None] | None
    """Called with the interface name when the device died on its own (wireguard-go exited);
    the reconciler sets it to trigger a repair pass."""

    async def create(self, ifname: str) -> None:
        """Make the device exist (idempotent)."""

    async def read(self, ifname: str) -> DeviceStatus | None:
        """The device's state, or None when it does not exist."""

    async def apply(self, ifname: str, ops: Sequence[WgOp]) -> None:
        """Execute WireGuard operations; raises WireGuardError."""

    async def destroy(self, ifname: str) -> None:
        """Remove the device (idempotent)."""

    async def close(self) -> None:
        """Release resources (stops wireguard-go processes this backend started)."""


def format_endpoint(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port))


# --- userspace: UAPI client --------------------------------------------------------------------


_UAPI_VALUE = re.compile(r"[0-9A-Za-z.:\[\]/%_-]{1,128}")
"""Every value meshd writes looks like this: hex keys, numbers, `true`, endpoints (`[v6]:port`,
a zone ID of an interface name at most), prefixes."""


def _check_uapi_framing(lines: list[str]) -> list[str]:
    """`lines` unchanged, or WireGuardError when a value could break the UAPI framing.

    A `set` is key=value lines ended by a blank line, and it is not atomic: a value holding a
    newline starts a line of its own choosing (`remove=true`), and one holding a blank line
    ends the transaction early, so wireguard-go configures nothing after it and still answers
    errno=0 (issue #22, an endpoint's IPv6 zone ID). Announced endpoints are refused long
    before (`meshd.core.endpoints.endpoint_refusal`); this is the last line of defence, and it
    runs before a byte is written. The error names the key and the peer, never the value (for
    other keys it could be a secret)."""
    peer = ""
    for line in lines:
        key, _, value = line.partition("=")
        if key == "public_key":
            peer = f" of peer {value[:16]}"
        if not _UAPI_VALUE.fullmatch(value):
            raise WireGuardError(
                f"encoding a UAPI set: the {key} value{peer} holds characters that would break "
                "the key=value line framing; nothing was written"
            )
    return lines


def encode_uapi_set(ops: Sequence[WgOp]) -> list[str]:
    """UAPI `set` lines for `ops` (cross-platform UAPI, wireguard.com/xplatform). Raises
    WireGuardError for a value that could break the line framing (`_check_uapi_framing`)."""
    lines: list[str] = []
    for op in ops:
        if isinstance(op, SetPrivateKey):
            lines.append(f"private_key={op.private_key.hex()}")
        elif isinstance(op, SetListenPort):
            lines.append(f"listen_port={op.port}")
        elif isinstance(op, SetFwmark):
            lines.append(f"fwmark={op.fwmark}")
        elif isinstance(op, RemovePeer):
            lines += [f"public_key={op.public_key.hex()}", "remove=true"]
        else:
            peer = op.peer
            lines.append(f"public_key={peer.public_key.hex()}")
            if isinstance(op, UpdatePeer):
                # Must follow public_key directly: only then does it apply to this peer.
                lines.append("update_only=true")
            if peer.endpoint is not None:
                lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
            psk = peer.preshared_key if peer.preshared_key is not None else ZERO_KEY
            lines.append(f"preshared_key={psk.hex()}")
            lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
            if isinstance(op, UpdatePeer) and not op.allowed_ips_changed:
                continue
            # Must precede the allowed_ip lines, else they are appended to the old set.
            lines.append("replace_allowed_ips=true")
            lines += [f"allowed_ip={p.with_prefixlen}" for p in peer.allowed_ips]
    return _check_uapi_framing(lines)


@functools.lru_cache(maxsize=65536)
def _parse_prefix(text: str) -> Prefix:
    # Every pass re-reads every peer's AllowedIPs; the same few thousand strings come back.
    return ipaddress.ip_network(text, strict=False)


_COUNTERS = ("last_handshake_time_sec", "last_handshake_time_nsec", "rx_bytes", "tx_bytes")


def decode_uapi_get(lines: Sequence[str]) -> DeviceStatus:
    private_key = ZERO_KEY
    listen_port = 0
    fwmark = 0
    peers: list[dict[str, Any]] = []
    for line in lines:
        key, _, value = line.partition("=")
        if key == "private_key":
            private_key = bytes.fromhex(value)
        elif key == "listen_port":
            listen_port = int(value)
        elif key == "fwmark":
            fwmark = int(value)
        elif key == "public_key":
            peers.append({"public_key": bytes.fromhex(value), "allowed_ips": []})
        elif peers:
            p = peers[-1]
            if key == "endpoint":
                p["endpoint"] = parse_endpoint(value)
            elif key == "preshared_key":
                psk = bytes.fromhex(value)
                p["preshared_key"] = None if psk == ZERO_KEY else psk
            elif key == "persistent_keepalive_interval":
                p["persistent_keepalive"] = int(value)
            elif key == "allowed_ip":
                p["allowed_ips"].append(_parse_prefix(value))
            elif key in _COUNTERS:
                p[key] = int(value)
    statuses: dict[bytes, PeerStatus] = {}
    for p in peers:
        peer = WgPeer(
            p["public_key"],
            p.get("endpoint"),
            tuple(p["allowed_ips"]),
            p.get("preshared_key"),
            p.get("persistent_keepalive", 0),
        )
        sec = p.get("last_handshake_time_sec", 0)
        handshake = sec + p.get("last_handshake_time_nsec", 0) / 1e9 if sec else None
        statuses[peer.public_key] = PeerStatus(
            peer, handshake, p.get("rx_bytes", 0), p.get("tx_bytes", 0)
        )
    device = WgDevice(private_key, listen_port, tuple(s.peer for s in statuses.values()), fwmark)
    return DeviceStatus(device, statuses)


class UapiClient:
    """An asyncio client of one wireguard-go UAPI socket.

    One request at a time (the protocol has no request IDs, so no pipelining); the connection
    is kept between requests and dropped after any error, because wireguard-go may close it
    after an error and a half-read answer would desynchronise the next request.
    """

    #: Stream limit: a `get` of 1,000 peers is ~400 KiB, far above asyncio's 64 KiB default.
    LIMIT = 64 * 1024 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_unix_connection(
                str(self.path), limit=self.LIMIT
            )
        return self._reader, self._writer

    async def _request(self, text: str) -> list[str]:
        async with self._lock:
            try:
                reader, writer = await self._connect()
                writer.write(text.encode())
                await writer.drain()
                raw = await reader.readuntil(b"\n\n")
            except BaseException:
                self.close()
                raise
        lines = raw.decode().split("\n")[:-2]
        if not lines or not lines[-1].startswith("errno="):
            self.close()
            raise WireGuardError(f"malformed UAPI answer from {self.path}")
        # wireguard-go answers errno=-98 where the kernel-style value is 98: normalise.
        err = abs(int(lines[-1].removeprefix("errno=")))
        if err != 0:
            self.close()
            raise WireGuardError(f"UAPI errno={err} ({os.strerror(err)})")
        return lines[:-1]

    async def get(self) -> list[str]:
        return await self._request("get=1\n\n")

    async def set(self, lines: Sequence[str]) -> None:
        await self._request("set=1\n" + "".join(f"{line}\n" for line in lines) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


# --- userspace: wireguard-go supervision -------------------------------------------------------

_WG_GO_IN_PRIVATE_DIR = (
    'mkdir -p /var/run/wireguard && mount --bind "$0" /var/run/wireguard && exec "$1" -f "$2"'
)


class UserspaceBackend:
    """wireguard-go processes started and supervised by meshd, configured over UAPI.

    `socket_dir` is where the UAPI sockets appear from our side. When it is not
    /var/run/wireguard (hard-coded in wireguard-go), wireguard-go runs in a private mount
    namespace with `socket_dir` bind-mounted there (`ip netns exec` gives one; otherwise
    `unshare --mount`), so many simulated nodes can each have a "mesh0". `netns` starts it in that
    network namespace. When a process dies unexpectedly, `on_exit(ifname)` is called; the
    reconciler then re-reads, finds no device and re-creates + re-applies it.
    """

    kind = "userspace"

    def __init__(
        self,
        socket_dir: Path = DEFAULT_SOCKET_DIR,
        netns: str | None = None,
        binary: str = "wireguard-go",
        on_exit: Callable[[str], None] | None = None,
        start_timeout: float = 5.0,
    ) -> None:
        found = shutil.which(binary)
        if found is None:
            raise BackendUnavailable(
                f"starting userspace WireGuard: {binary!r} not found; install the Debian package "
                "wireguard-go (apt-get install wireguard-go)"
            )
        self.binary = found
        self.socket_dir = Path(socket_dir)
        self.netns = netns
        self.on_exit = on_exit
        self.start_timeout = start_timeout
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._clients: dict[str, UapiClient] = {}
        self._create_lock = asyncio.Lock()

    def socket_path(self, ifname: str) -> Path:
        return self.socket_dir / f"{ifname}.sock"

    def pid(self, ifname: str) -> int | None:
        proc = self._procs.get(ifname)
        return proc.pid if proc is not None and proc.returncode is None else None

    def _client(self, ifname: str) -> UapiClient:
        if ifname not in self._clients:
            self._clients[ifname] = UapiClient(self.socket_path(ifname))
        return self._clients[ifname]

    def _argv(self, ifname: str) -> list[str]:
        # /var/run is a symlink to /run on current distributions: compare where the paths
        # lead, or "/run/wireguard" would be taken for a private directory and need a mount
        # namespace (CAP_SYS_ADMIN, which the systemd unit does not grant).
        private = self.socket_dir.resolve() != DEFAULT_SOCKET_DIR.resolve()
        if self.netns is None and not private:
            return [self.binary, "-f", ifname]
        if not private:
            return ["ip", "netns", "exec", self.netns or "", self.binary, "-f", ifname]
        script = ["sh", "-c", _WG_GO_IN_PRIVATE_DIR, str(self.socket_dir), self.binary, ifname]
        if self.netns is None:
            return ["unshare", "--mount", "--propagation", "private", *script]
        return ["ip", "netns", "exec", self.netns, *script]

    async def create(self, ifname: str) -> None:
        async with self._create_lock:
            if await self._answers(ifname):
                # Ours, or one left by a previous meshd run: adopt it (configured, but only
                # supervised through the reconciler's reads) rather than fight over the tun.
                return
            await self._stop(ifname)
            self.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # A SIGKILLed wireguard-go leaves its socket behind; nobody answers on it.
            with contextlib.suppress(FileNotFoundError):
                self.socket_path(ifname).unlink()
            env = dict(os.environ, LOG_LEVEL="error", WG_PROCESS_FOREGROUND="1")
            proc = await asyncio.create_subprocess_exec(
                *self._argv(ifname),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                # A process group of its own, so a Ctrl-C meant for meshd does not kill it
                # first; but meshd's session: a session of its own (setsid) put it in a CPU
                # autogroup of its own (sched_autogroup), and cost 20 % of TCP throughput
                # against the same wireguard-go started from a shell (bench compare).
                # (uvloop takes no `process_group`, hence the preexec function.)
                preexec_fn=os.setpgrp,
            )
            self._procs[ifname] = proc
            deadline = time.monotonic() + self.start_timeout
            while not await self._answers(ifname):
                if proc.returncode is not None or time.monotonic() > deadline:
                    err = b""
                    if proc.returncode is not None and proc.stderr is not None:
                        err = await proc.stderr.read(2000)
                    await self._stop(ifname)
                    raise WireGuardError(
                        f"starting wireguard-go for {ifname}: no UAPI socket at "
                        f"{self.socket_path(ifname)} ({err.decode(errors='replace').strip()})"
                    )
                # wireguard-go gives no readiness signal; its socket appears within ~10 ms.
                await asyncio.sleep(0.01)
            self._watchers[ifname] = asyncio.create_task(self._watch(ifname, proc))
            log.info("started wireguard-go for %s (pid %d)", ifname, proc.pid)

    async def _answers(self, ifname: str) -> bool:
        try:
            await self._client(ifname).get()
        except (OSError, WireGuardError, asyncio.IncompleteReadError):
            return False
        return True

    async def _watch(self, ifname: str, proc: asyncio.subprocess.Process) -> None:
        if proc.stderr is not None:
            # Drain its log so a chatty wireguard-go never blocks on a full pipe.
            while line := await proc.stderr.readline():
                log.debug("wireguard-go %s: %s", ifname, line.decode(errors="replace").rstrip())
        code = await proc.wait()
        current = self._procs.get(ifname)
        if current is proc:
            del self._procs[ifname]
            self._watchers.pop(ifname, None)
            log.warning("wireguard-go for %s exited with %s; will restart", ifname, code)
            if self.on_exit is not None:
                self.on_exit(ifname)
        elif current is not None:
            # A reconcile pass found the interface gone and started a new wireguard-go before
            # this watcher woke (a loaded host): still say why (seen in CI under load).
            log.warning("wireguard-go for %s exited with %s; already restarted", ifname, code)

    async def read(self, ifname: str) -> DeviceStatus | None:
        if self.pid(ifname) is None and not self.socket_path(ifname).exists():
            return None
        try:
            lines = await self._client(ifname).get()
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except (OSError, asyncio.IncompleteReadError, WireGuardError) as exc:
            if self.pid(ifname) is None:
                return None
            raise WireGuardError(f"reading {ifname}: {exc}") from None
        return decode_uapi_get(lines)

    async def apply(self, ifname: str, ops: Sequence[WgOp]) -> None:
        if not ops:
            return
        try:
            await self._client(ifname).set(encode_uapi_set(ops))
        except (OSError, asyncio.IncompleteReadError, WireGuardError) as exc:
            # The message names the interface and the error, never the lines (they hold keys).
            raise WireGuardError(f"setting {describe(ops)} on {ifname}: {exc}") from None

    async def _stop(self, ifname: str) -> None:
        proc = self._procs.pop(ifname, None)
        watcher = self._watchers.pop(ifname, None)
        client = self._clients.pop(ifname, None)
        if client is not None:
            client.close()
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # wireguard-go removes its tun and socket
            try:
                await asyncio.wait_for(proc.wait(), 3.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def destroy(self, ifname: str) -> None:
        adopted = ifname not in self._procs and await self._answers(ifname)
        await self._stop(ifname)
        if not adopted:
            return
        # A wireguard-go adopted from an earlier run (meshd was killed) is not our child to
        # signal: deleting its tun ends it, and it removes its socket on the way out.
        from meshd.adapters.rtnl import open_iproute

        async with open_iproute(self.netns) as ipr:
            with contextlib.suppress(Exception):
                await ipr.link("del", ifname=ifname)
        for _ in range(100):  # up to 2 s
            if not self.socket_path(ifname).exists():
                return
            await asyncio.sleep(0.02)
        log.warning("wireguard-go for %s still running after its interface was deleted", ifname)

    async def close(self) -> None:
        for ifname in list(self._procs):
            await self._stop(ifname)


def describe(ops: Sequence[WgOp]) -> str:
    """What a batch of operations does, for error messages (no keys)."""
    kinds = []
    if any(isinstance(o, SetPrivateKey) for o in ops):
        kinds.append("private key")
    if any(isinstance(o, SetListenPort) for o in ops):
        kinds.append("listen port")
    if any(isinstance(o, SetFwmark) for o in ops):
        kinds.append("fwmark")
    n = sum(isinstance(o, AddPeer | UpdatePeer | RemovePeer) for o in ops)
    if n:
        kinds.append(f"{n} peer(s)")
    return " and ".join(kinds) or "nothing"


# --- kernel: generic netlink -------------------------------------------------------------------


class KernelBackend:
    """The in-kernel WireGuard module over generic netlink (pyroute2), uvloop-safe.

    pyroute2's WireGuard API takes one peer per `set()` call and keys in base64; it has no
    replace-peers flag, so updates remove the old allowed IPs by replacing the peer.
    """

    kind = "kernel"

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.on_exit: Callable[[str], None] | None = None  # the kernel device has no process

    @staticmethod
    async def available(netns: str | None = None) -> bool:
        """True when the WireGuard generic-netlink family resolves (module present)."""
        from meshd.adapters.rtnl import open_wireguard_genl

        try:
            wg = open_wireguard_genl(netns)
            try:
                await wg.setup_endpoint()
            finally:
                wg.close()
        except Exception:  # NetlinkError(2) without the module: a clean "no"
            return False
        return True

    async def create(self, ifname: str) -> None:
        from meshd.adapters.rtnl import open_iproute

        async with open_iproute(self.netns) as ipr:
            try:
                await ipr.link("add", ifname=ifname, kind="wireguard")
            except Exception as exc:
                if getattr(exc, "code", None) != 17:  # EEXIST: already there
                    raise WireGuardError(f"creating {ifname}: {exc}") from None

    async def read(self, ifname: str) -> DeviceStatus | None:
        from meshd.adapters.rtnl import open_wireguard_genl

        wg = open_wireguard_genl(self.netns)
        try:
            # Resolves the family first: pyroute2's info() and set() read its ID before they
            # would set the socket up, and fail on a fresh socket ("run bind() before placing
            # any requests"); found when the kernel backend first ran in the kernel VM.
            await wg.setup_endpoint()
            msgs = [m async for m in await wg.info(ifname)]
        except Exception as exc:
            if getattr(exc, "code", None) in (2, 19):  # ENOENT / ENODEV: no such device
                return None
            raise WireGuardError(f"reading {ifname}: {exc}") from None
        finally:
            wg.close()
        private_key, port, fwmark = ZERO_KEY, 0, 0
        statuses: dict[bytes, PeerStatus] = {}
        for msg in msgs:
            pk = msg.get("WGDEVICE_A_PRIVATE_KEY")
            if pk:
                private_key = b64decode(pk)
            port = msg.get("WGDEVICE_A_LISTEN_PORT") or port
            fwmark = msg.get("WGDEVICE_A_FWMARK") or fwmark
            for p in msg.get("WGDEVICE_A_PEERS") or []:
                status = _kernel_peer(p)
                key = status.peer.public_key
                # A peer whose AllowedIPs do not fit in one dump message is continued at the
                # start of the next, with its key and the remaining AllowedIPs only
                # (wireguard/netlink.c, wg_get_device_dump): join them, or the first part is
                # lost and every pass re-adds it. Found with 300 peers in the kernel VM.
                first = statuses.get(key)
                if first is not None:
                    allowed = first.peer.allowed_ips + status.peer.allowed_ips
                    peer = dataclasses.replace(first.peer, allowed_ips=allowed)
                    status = dataclasses.replace(first, peer=peer)
                statuses[key] = status
        device = WgDevice(private_key, port, tuple(s.peer for s in statuses.values()), fwmark)
        return DeviceStatus(device, statuses)

    async def apply(self, ifname: str, ops: Sequence[WgOp]) -> None:
        from meshd.adapters.rtnl import open_wireguard_genl

        # Every peer's netlink attributes are built (and checked) before the first is sent:
        # a refused one must not leave the device half configured.
        try:
            specs = {
                id(op): kernel_peer_spec(op) for op in ops if isinstance(op, AddPeer | UpdatePeer)
            }
        except WireGuardError as exc:
            raise WireGuardError(f"setting {describe(ops)} on {ifname}: {exc}") from None
        wg = open_wireguard_genl(self.netns)
        try:
            await wg.setup_endpoint()  # see read()
            for op in ops:
                if isinstance(op, SetPrivateKey):
                    await wg.set(ifname, private_key=b64encode(op.private_key).decode())
                elif isinstance(op, SetListenPort):
                    await wg.set(ifname, listen_port=op.port)
                elif isinstance(op, SetFwmark):
                    await wg.set(ifname, fwmark=op.fwmark)
                elif isinstance(op, RemovePeer):
                    key = b64encode(op.public_key).decode()
                    await wg.set(ifname, peer={"public_key": key, "remove": True})
                else:
                    await wg.set(ifname, peer=specs[id(op)])
        except Exception as exc:
            raise WireGuardError(f"setting {describe(ops)} on {ifname}: {exc}") from None
        finally:
            wg.close()

    async def destroy(self, ifname: str) -> None:
        from meshd.adapters.rtnl import open_iproute

        async with open_iproute(self.netns) as ipr:
            with contextlib.suppress(Exception):
                await ipr.link("del", ifname=ifname)

    async def close(self) -> None:
        return None


def kernel_peer_spec(op: AddPeer | UpdatePeer) -> dict[str, Any]:
    """pyroute2 `wg.set` peer argument. As over UAPI: an update replaces AllowedIPs only when
    they changed (without the replace flag the kernel would add to the old set)."""
    peer = op.peer
    spec: dict[str, Any] = {
        "public_key": b64encode(peer.public_key).decode(),
        "persistent_keepalive": peer.persistent_keepalive,
        "preshared_key": b64encode(peer.preshared_key or ZERO_KEY).decode(),
    }
    if isinstance(op, AddPeer) or op.allowed_ips_changed:
        spec["allowed_ips"] = [p.with_prefixlen for p in peer.allowed_ips]
        spec["replace_allowed_ips"] = True
    if peer.endpoint is not None:
        host, port = peer.endpoint
        # pyroute2 takes the address as text: only a plain IP literal is passed on (no zone
        # ID, whose text Python keeps as it came; issue #22). See `_check_uapi_framing`.
        if "%" in host or not _is_ip_literal(host):
            raise WireGuardError(
                f"encoding peer {peer.public_key.hex()[:16]} for the kernel: its endpoint is not "
                "a plain IP address; nothing was set"
            )
        spec["endpoint_addr"], spec["endpoint_port"] = host, port
    return spec


def _is_ip_literal(text: str) -> bool:
    try:
        return str(ipaddress.ip_address(text)) == text
    except ValueError:
        return False


def _kernel_peer(p: Any) -> PeerStatus:
    key = b64decode(p.get("WGPEER_A_PUBLIC_KEY"))
    psk = p.get("WGPEER_A_PRESHARED_KEY")
    psk_bytes = b64decode(psk) if psk else ZERO_KEY
    endpoint = p.get("WGPEER_A_ENDPOINT")
    ep = (endpoint["addr"], endpoint["port"]) if endpoint and endpoint.get("port") else None
    allowed: list[Prefix] = []
    for a in p.get("WGPEER_A_ALLOWEDIPS") or []:
        allowed.append(ipaddress.ip_network(a.get("addr"), strict=False))
    hs = p.get("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
    sec = hs.get("tv_sec", 0) if isinstance(hs, dict) else 0
    peer = WgPeer(
        key,
        ep,
        tuple(allowed),
        None if psk_bytes == ZERO_KEY else psk_bytes,
        p.get("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0,
    )
    return PeerStatus(
        peer, float(sec) or None, p.get("WGPEER_A_RX_BYTES", 0), p.get("WGPEER_A_TX_BYTES", 0)
    )


async def select_backend(
    kind: Literal["auto", "kernel", "userspace"] = "auto",
    netns: str | None = None,
    socket_dir: Path = DEFAULT_SOCKET_DIR,
    on_exit: Callable[[str], None] | None = None,
    binary: str = "wireguard-go",
) -> WireGuardBackend:
    """The backend to use: "auto" takes the kernel module when it exists, else wireguard-go."""
    if kind in ("auto", "kernel"):
        if await KernelBackend.available(netns):
            return KernelBackend(netns)
        if kind == "kernel":
            raise BackendUnavailable(
                "starting kernel WireGuard: the wireguard module is not available "
                "(modprobe wireguard, or use the userspace backend)"
            )
    return UserspaceBackend(socket_dir, netns, binary, on_exit)
