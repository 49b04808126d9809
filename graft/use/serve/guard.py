"""Who may talk to the server: the Host allow-list and the Origin check, as one ASGI middleware.

A page on any web site can make the visitor's browser send requests to 127.0.0.1:8000. Two
defences, both checked before a route runs (issue 22, finding 15):
- Host: a DNS-rebinding page reaches the server under its own name (evil.example resolving to
  127.0.0.1) and may then read the answers, so only the names the server is known by are
  answered: loopback names, the bound address, and --allow-host. A server bound to every
  interface (0.0.0.0) also answers any IP address and this machine's name: rebinding needs a
  name, never a literal address. (Starlette's TrustedHostMiddleware takes names and wildcards of
  names only, and answers in text; graft's errors are JSON.)
- Origin: a cross-origin form or `fetch(..., {mode: "no-cors"})` POST with a `text/plain` body
  needs no CORS preflight, so the browser sends it and the server would decode it. A POST whose
  Origin is another site's is refused with 403; the server's own page, curl and scripts (which
  send no Origin) are not.
"""

from __future__ import annotations

import ipaddress
import socket

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

LOOPBACK = ("localhost", "127.0.0.1", "::1", "localhost.localdomain")
EVERY_INTERFACE = ("0.0.0.0", "::", "")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def host_name(host: str) -> str:
    """The name of a Host header without its port: "[::1]:8000" -> "::1", "a.b:80" -> "a.b"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")  # "localhost." is localhost


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class Guard:
    """ASGI middleware: 400 for a Host the server is not known by, 403 for a POST from another
    site's page."""

    def __init__(self, app, *, host: str = "127.0.0.1", allow_hosts=(), allow_origins=()):
        self.app = app
        names = {*LOOPBACK, host_name(host), *(host_name(h) for h in allow_hosts)}
        self.any_host = "*" in allow_hosts
        self.any_address = host in EVERY_INTERFACE
        if self.any_address:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.names = frozenset(names)
        self.any_origin = "*" in allow_origins
        self.origins = frozenset(o.rstrip("/").lower() for o in allow_origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        refusal = self.refusal(scope, host, headers.get("origin"))
        if refusal is not None:
            return await JSONResponse({"error": refusal[1]}, status_code=refusal[0])(scope, receive, send)
        return await self.app(scope, receive, send)

    def refusal(self, scope, host: str, origin: str | None) -> tuple[int, str] | None:
        """(status, message) when the request is refused, else None."""
        if not self.host_ok(host):
            return 400, (f"Host {host!r} is not a name this server answers to: ask it by 127.0.0.1 or "
                         f"localhost, or start it with --allow-host NAME")
        if scope["method"] in SAFE_METHODS or origin is None or self.any_origin:
            return None
        origin = origin.strip().rstrip("/").lower()
        if origin == f"{scope.get('scheme', 'http')}://{host.strip().lower()}" or origin in self.origins:
            return None
        return 403, (f"a POST from the page of {origin!r} is refused: only this server's own page may "
                     f"post (graft serve --allow-origin adds one)")

    def host_ok(self, host: str) -> bool:
        name = host_name(host)
        if not name:
            return False
        return self.any_host or name in self.names or (self.any_address and _is_address(name))
