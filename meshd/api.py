"""The local API: aiohttp on a unix socket, JSON under /v0, Prometheus text at /metrics.

The socket is the access control: created with mode 0660 in a runtime directory of mode 0750,
so only root (and the group meshd runs with) can change the mesh through it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from meshd.client import API_PREFIX
from meshd.core.errors import MeshError

log = logging.getLogger(__name__)


class Control(Protocol):
    """What the daemon offers the API. Implemented by `meshd.daemon.Daemon`."""

    async def refresh(self) -> None: ...
    def status(self) -> dict[str, Any]: ...
    def peers(self) -> list[dict[str, Any]]: ...
    def health(self) -> tuple[bool, str]: ...
    async def leave(self) -> dict[str, Any]: ...
    async def rotate(self) -> dict[str, Any]: ...
    async def apply_revocation(self, record: bytes) -> dict[str, Any]: ...
    def metrics(self) -> str: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=1) + "\n", status=status, content_type="application/json"
    )


def build_app(control: Control) -> web.Application:
    async def status(_: web.Request) -> web.Response:
        await control.refresh()
        return _json(control.status())

    async def peers(_: web.Request) -> web.Response:
        await control.refresh()
        return _json(control.peers())

    async def health(_: web.Request) -> web.Response:
        healthy, reason = control.health()
        return _json(
            {"healthy": healthy, "reason": reason} if healthy else {"error": reason},
            200 if healthy else 503,
        )

    async def leave(_: web.Request) -> web.Response:
        return _json(await control.leave())

    async def rotate(_: web.Request) -> web.Response:
        return _json(await control.rotate())

    async def revocations(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            record = bytes.fromhex(body["record"])
        except (ValueError, KeyError, TypeError):
            return _json({"error": 'expected JSON {"record": HEX}'}, 400)
        return _json(await control.apply_revocation(record))

    async def metrics(_: web.Request) -> web.Response:
        await control.refresh()
        return web.Response(
            text=control.metrics(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Prometheus-Format": "0.0.4"},
        )

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except web.HTTPException:
            raise
        except MeshError as exc:
            return _json({"error": str(exc)}, 409)
        except Exception:
            log.exception("API %s %s failed", request.method, request.path)
            return _json({"error": "internal error; see meshd's log"}, 500)

    app = web.Application(middlewares=[errors])
    app.router.add_get(f"{API_PREFIX}/status", status)
    app.router.add_get(f"{API_PREFIX}/peers", peers)
    app.router.add_get(f"{API_PREFIX}/health", health)
    app.router.add_post(f"{API_PREFIX}/leave", leave)
    app.router.add_post(f"{API_PREFIX}/rotate", rotate)
    app.router.add_post(f"{API_PREFIX}/revocations", revocations)
    app.router.add_get("/metrics", metrics)
    return app


class ApiServer:
    def __init__(self, control: Control, socket: Path) -> None:
        self.socket = socket
        self._runner = web.AppRunner(build_app(control), access_log=None)

    async def start(self) -> None:
        self.socket.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # a stale socket of a crashed meshd
        await self._runner.setup()
        old_umask = os.umask(0o117)  # socket created 0660 with no window of wider access
        try:
            site = web.UnixSite(self._runner, str(self.socket))
            await site.start()
        finally:
            os.umask(old_umask)

    async def stop(self) -> None:
        try:
            await self._runner.cleanup()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()
