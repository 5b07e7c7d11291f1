"""The one way meshctl (and tests) talk to a running meshd: HTTP over its unix socket.

Connection failures become `MeshdNotRunning` with the socket path, no answer in time
`MeshdNotAnswering`; HTTP errors become `ApiError` with the daemon's message. Callers never see
aiohttp exceptions.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from meshd.core.errors import MeshError

API_PREFIX = "/v0"


class MeshdNotRunning(MeshError):
    def __init__(self, socket: Path) -> None:
        super().__init__(f"meshd is not running at {socket}")
        self.socket = socket


class MeshdNotAnswering(MeshError):
    def __init__(self, socket: Path, timeout: float) -> None:
        super().__init__(f"meshd at {socket} did not answer within {timeout}s")
        self.socket = socket


class ApiError(MeshError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MeshdClient:
    def __init__(self, socket: Path, timeout: float = 10.0) -> None:
        self.socket = socket
        self.timeout = timeout

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        if not self.socket.exists():
            raise MeshdNotRunning(self.socket)
        connector = aiohttp.UnixConnector(path=str(self.socket))
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.request(method, f"http://meshd{path}", json=body) as resp,
            ):
                if resp.content_type == "application/json":
                    data = await resp.json()
                else:
                    data = await resp.text()
                if resp.status >= 400:
                    message = data.get("error", str(data)) if isinstance(data, dict) else data
                    raise ApiError(resp.status, f"meshd refused {method} {path}: {message}")
                return data
        except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError):
            raise MeshdNotRunning(self.socket) from None
        except TimeoutError:
            raise MeshdNotAnswering(self.socket, self.timeout) from None

    async def status(self) -> dict[str, Any]:
        return await self.request("GET", f"{API_PREFIX}/status")  # type: ignore[no-any-return]

    async def peers(self) -> list[dict[str, Any]]:
        return await self.request("GET", f"{API_PREFIX}/peers")  # type: ignore[no-any-return]

    async def health(self) -> dict[str, Any]:
        try:
            return await self.request("GET", f"{API_PREFIX}/health")  # type: ignore[no-any-return]
        except ApiError as exc:
            if exc.status == 503:  # unhealthy is an answer, not a failure to answer
                return {"healthy": False, "reason": str(exc).split(": ", 1)[-1]}
            raise

    async def leave(self) -> dict[str, Any]:
        return await self.request("POST", f"{API_PREFIX}/leave")  # type: ignore[no-any-return]

    async def rotate(self) -> dict[str, Any]:
        return await self.request("POST", f"{API_PREFIX}/rotate")  # type: ignore[no-any-return]

    async def apply_revocation(self, record: bytes) -> dict[str, Any]:
        return await self.request(  # type: ignore[no-any-return]
            "POST", f"{API_PREFIX}/revocations", {"record": record.hex()}
        )

    async def metrics(self) -> str:
        return await self.request("GET", "/metrics")  # type: ignore[no-any-return]


def run(coro: Any) -> Any:
    return asyncio.run(coro)
