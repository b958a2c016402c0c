"""The HTTP front end: read a client's request, route it, answer it.

Every request gets an answer: the program's validated response, or one of
the statuses of docs/design.md section 6 with a short body.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

from aiohttp import web

from mayflyd.protocol import Response
from mayflyd.supervisor.host_handle import (
    BadResponse,
    HostUnavailable,
    RequestData,
    RequestTooLarge,
    SandboxCpuExceeded,
    SandboxCrashed,
    SandboxTimeout,
)
from mayflyd.supervisor.router import Router
from mayflyd.supervisor.tenant import SandboxOutOfMemory, Tenant, TenantBusy

__all__ = ["FrontEnd", "make_server"]

log = logging.getLogger("mayflyd.request")
access = logging.getLogger("mayflyd.access")

# Headers that describe the connection, not the content: the front end owns
# them, a program cannot set them.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
                         "trailer", "upgrade", "content-length"})
_READ_CHUNK = 64 * 1024


class _DaemonAnswer(web.Response):
    """An answer the daemon made instead of the program's: a refusal or a failure.
    Its own type, so that the tenant counts it as the daemon's, whatever its status."""


def _error(status: int, text: str, req_id: int, *, headers: dict[str, str] | None = None) -> web.Response:
    response = _DaemonAnswer(status=status, text=f"{status} {text}\n", headers=headers)
    response.headers["X-Request-Id"] = str(req_id)
    return response


class FrontEnd:
    """Turns aiohttp requests into sandbox requests."""

    def __init__(self, router: Callable[[], Router[Tenant]], *, access_log: bool = False) -> None:
        self._router = router
        self._ids = itertools.count(1)
        self._access_log = access_log

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        req_id = next(self._ids)
        started = time.monotonic()
        tenant = self._router().route(request.host)
        if tenant is None:
            response = _error(404, "Not Found: no tenant serves this host", req_id)
        else:
            response = await self._handle(request, req_id, tenant)
            tenant.request_done(response.status, time.monotonic() - started,
                                by_program=not isinstance(response, _DaemonAnswer))
        if self._access_log:
            access.info("%s %s %d", request.method, request.path_qs, response.status,
                        extra={"tenant": tenant.name if tenant else None, "req": req_id,
                               "ms": round((time.monotonic() - started) * 1000, 2)})
        return response

    async def _handle(self, request: web.BaseRequest, req_id: int, tenant: Tenant) -> web.Response:
        limits = tenant.config.limits
        body: bytes | None = b""
        if request.body_exists:  # most requests have none: no timer, no reader
            try:
                async with asyncio.timeout(limits.request_timeout_ms / 1000):
                    body = await self._read_body(request, limits.max_body)
            except TimeoutError:
                tenant.limit_hit("request_timeout_ms", req_id, "the client did not send its body in time")
                return _error(408, "Request Timeout: the request body did not arrive in time", req_id,
                              headers={"Connection": "close"})
        if body is None:
            tenant.limit_hit("max_body", req_id, f"request body over {limits.max_body} bytes")
            return _error(413, "Content Too Large: the request body exceeds the tenant's limit", req_id,
                          headers={"Connection": "close"})
        data = RequestData(
            # As the client sent them (percent-encoded): the program decodes,
            # nothing is lost to a character set on the way.
            req_id=req_id, method=request.method, path=request.raw_path.partition("?")[0],
            query=request.rel_url.raw_query_string,
            headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.raw_headers],
            body=body, client=request.remote or "")
        extra = {"tenant": tenant.name, "req": req_id}
        try:
            answer = await tenant.handle(data)
        except RequestTooLarge as exc:
            log.info("request head too large: %s", exc, extra=extra)
            return _error(431, "Request Header Fields Too Large", req_id, headers={"Connection": "close"})
        except TenantBusy as exc:
            tenant.limit_hit("concurrency", req_id, str(exc))
            return _error(503, "Service Unavailable: the tenant is at its concurrency limit", req_id,
                          headers={"Retry-After": "1"})
        except HostUnavailable as exc:
            log.warning("no host: %s", exc, extra=extra)
            return _error(503, "Service Unavailable: the tenant's program is not running", req_id,
                          headers={"Retry-After": "1"})
        except SandboxTimeout as exc:
            tenant.limit_hit("request_timeout_ms", req_id, str(exc))
            return _error(504, f"Gateway Timeout: the program did not answer within "
                               f"{limits.request_timeout_ms} ms", req_id)
        except SandboxCpuExceeded as exc:
            tenant.limit_hit("request_cpu_ms", req_id, str(exc))
            return _error(504, f"Gateway Timeout: the program used more than its {limits.request_cpu_ms} ms "
                               "of CPU", req_id)
        except SandboxOutOfMemory as exc:
            tenant.limit_hit("memory", req_id, str(exc))
            return _error(502, "Bad Gateway: the program ran out of memory", req_id)
        except SandboxCrashed as exc:
            log.warning("sandbox failed: %s", exc, extra=extra)
            return _error(502, "Bad Gateway: the program ended without answering", req_id)
        except BadResponse as exc:
            if exc.over_limit:
                tenant.limit_hit("max_response", req_id, str(exc))
            else:
                log.warning("invalid response from the sandbox: %s", exc, extra=extra)
            return _error(502, "Bad Gateway: the program sent an invalid response", req_id)
        return self._to_http(answer, req_id, extra)

    @staticmethod
    async def _read_body(request: web.BaseRequest, limit: int) -> bytes | None:
        """The whole body, or None when it is over the limit."""
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks = bytearray()
        async for chunk in request.content.iter_chunked(_READ_CHUNK):
            chunks += chunk
            if len(chunks) > limit:
                return None
        return bytes(chunks)

    @staticmethod
    def _to_http(answer: Response, req_id: int, extra: dict[str, object]) -> web.Response:
        if answer.status < 200:
            log.warning("the program answered informational status %d as final", answer.status, extra=extra)
            return _error(502, "Bad Gateway: the program sent an invalid response", req_id)
        response = web.Response(status=answer.status)
        for name, value in answer.headers:
            if name.lower() not in _HOP_BY_HOP:
                response.headers.add(name, value)
        response.headers["X-Request-Id"] = str(req_id)
        if answer.status not in (204, 304):
            response.body = answer.body
        return response


def make_server(front_end: FrontEnd) -> web.Server:
    """aiohttp's low-level server: every request goes to the front end, with
    no application router or middleware in between."""
    return web.Server(front_end.handle, access_log=None)
