"""The few staff calls the simulator and the demo make (tokens, a school's catalogue), over the public API.

Going through the API rather than the database means the demo exercises what a technician or an MIS
sync would, and `mdm simulate` works against any server it can reach.
"""

from __future__ import annotations

from typing import Any

import httpx


class SimulationError(Exception):
    """The simulation could not start or go on (no way to enrol, a refused staff call); the message says why."""


class StaffApi:
    """Bearer-token calls to /api/v1 on the shared client; a refusal is a SimulationError with the server's detail."""

    def __init__(self, http: httpx.AsyncClient, url: str, token: str) -> None:
        self._http = http
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}

    async def get(self, path: str, **params: Any) -> Any:
        return await self._call("GET", path, params=params or None)

    async def post(self, path: str, body: Any = None, *, content: bytes | None = None, media: str = "") -> Any:
        if content is not None:
            return await self._call("POST", path, content=content, headers={"Content-Type": media})
        return await self._call("POST", path, json=body if body is not None else {})

    async def _call(self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(
                method, self._url + path, headers={**self._headers, **(headers or {})}, **kwargs
            )
        except httpx.RequestError as exc:
            raise SimulationError(f"could not reach {self._url}: {exc}") from exc
        if not response.is_success:
            raise SimulationError(f"{method} {path} was refused ({response.status_code}): {_detail(response)}")
        return response.json() if response.content else None


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail or response.text[:200])
