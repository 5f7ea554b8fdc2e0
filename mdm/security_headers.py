"""Security headers on every response: no sniffing, no framing, no referrer, and a Content-Security-Policy.

The API serves JSON, CSV, certificates and one printable HTML page (the exit evidence), so the default
policy lets a browser load nothing at all. A page that needs its own inline style says so with
`page_policy(styles=...)`, which allows exactly that style by its hash. Only the interactive API docs
(/docs, /redoc), which FastAPI builds from scripts on a CDN, get a looser policy, and only on their paths.
"""

import base64
import hashlib
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Directives that do not fall back to default-src are closed explicitly.
_CLOSED = "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
STRICT_POLICY = f"default-src 'none'; {_CLOSED}"
_CDN = "https://cdn.jsdelivr.net"
DOCS_POLICY = (
    f"default-src 'none'; script-src 'unsafe-inline' {_CDN}; "
    f"style-src 'unsafe-inline' {_CDN} https://fonts.googleapis.com; font-src https://fonts.gstatic.com; "
    f"img-src 'self' data: {_CDN} https://fastapi.tiangolo.com; connect-src 'self'; worker-src blob:; {_CLOSED}"
)
_ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_CSP = b"content-security-policy"


def page_policy(styles: Iterable[str] = ()) -> str:
    """The strict policy plus the given inline <style> blocks, each allowed by its SHA-256."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in styles)
    return f"default-src 'none'; style-src {hashes}; {_CLOSED}" if hashes else STRICT_POLICY


class SecurityHeadersMiddleware:
    """Adds the headers to every HTTP response, keeping a Content-Security-Policy a route set itself."""

    def __init__(self, app: ASGIApp, docs_paths: Iterable[str | None] = ()) -> None:
        self.app = app
        self.docs_paths = frozenset(path for path in docs_paths if path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = (DOCS_POLICY if scope["path"] in self.docs_paths else STRICT_POLICY).encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in _ALWAYS if name not in present]
                if _CSP not in present:
                    headers.append((_CSP, policy))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
