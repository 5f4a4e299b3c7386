"""Who may talk to the playground: the Host header allow-list and the API key.

A server on 127.0.0.1 is reachable by any web page the user opens: the page's script cannot read
another origin's answers, but a DNS-rebinding page (its own name, re-pointed at 127.0.0.1) can, unless
the server refuses requests whose Host header is not a name it answers to. So every request's Host
must be a loopback name (localhost, 127.0.0.1, ::1) or one named with `--allowed-host`.

The API key, when set, guards every route that reveals or changes data (the API, saved conversations,
the OpenAPI schema); only the static page and a bare /health stay open.
"""

from __future__ import annotations

import ipaddress
import json
import secrets

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from llmlab.serve.api_errors import APIError, error_body

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port: 'example.com:80' -> 'example.com', '[::1]:80' -> '::1'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server to this machine ('localhost', 127.x.y.z, ::1)."""
    if host_name(host) == "localhost":
        return True
    try:
        return ipaddress.ip_address(host_name(host)).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind_host: str = "127.0.0.1", extra: list[str] | tuple[str, ...] = ()) -> set[str]:
    """The Host names a server bound to `bind_host` answers: loopback names, the bound address, `extra`."""
    names = {*LOOPBACK_NAMES, *(host_name(h) for h in extra)}
    if bind_host not in ("0.0.0.0", "::", ""):  # a wildcard address is never a Host a browser sends
        names.add(host_name(bind_host))
    return names


class HostAllowList:
    """ASGI middleware: 400 (OpenAI's error shape) for a request whose Host header is not allowed.

    `*` in the allowed names turns the check off (behind a proxy that checks Host itself).
    """

    def __init__(self, app: ASGIApp, hosts: set[str]) -> None:
        self.app = app
        self.hosts = {host_name(h) for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.hosts:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if host_name(header) in self.hosts:
            await self.app(scope, receive, send)
            return
        body = json.dumps(error_body(400, f"this server does not answer to the host '{header}'; start it with "
                                     f"--allowed-host {host_name(header) or 'NAME'} to allow it",
                                     param=None, code="host_not_allowed")).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def check_key(request: Request) -> None:
    """With an API key configured, a guarded route needs `Authorization: Bearer <key>` (401 otherwise)."""
    key = request.app.state.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not secrets.compare_digest(given.encode(), key.encode()):
        raise APIError(401, "Incorrect or missing API key; send it as 'Authorization: Bearer <key>'",
                       code="invalid_api_key")


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """A warning for a server reachable beyond this machine with no API key; None when there is no risk."""
    if api_key or is_loopback(host):
        return None
    return (f"warning: serving on {host} without an API key: anyone who can reach this address can read "
            "the saved conversations and use the models; set --api-key (or LLMLAB_API_KEY)")
