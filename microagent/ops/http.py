"""The HTTP endpoints of a running agent or group: probes, metrics, the contract.

    /health         200 while the process lives (a liveness probe)
    /ready          200 when every agent is started, its bus and broker answer a ping and its
                    consumers fetch; 503 with a JSON body naming what is not ready
    /metrics        Prometheus text exposition (extra ``prometheus``); 404 saying why without it
    /asyncapi.json  the AsyncAPI 3.0 document of the agents
    /docs           the HTML page of ``microagent docs``

A probe server needs no framework: this is HTTP/1.1 on ``asyncio.start_server``, GET only, one
request per connection (``Connection: close``), a bounded request head read within a deadline, so
a slow or hostile client costs one connection and nothing else.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from microagent.errors import InvalidArgument

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


__all__ = ['Endpoints', 'HttpServer', 'Page', 'Readiness', 'answer', 'exposition', 'parse_address',
           'process_only', 'start_http']

log = logging.getLogger('microagent.http')

MAX_HEAD = 16 * 1024  # bytes of request line and headers; a probe sends a few hundred
REQUEST_TIMEOUT = 10.0  # seconds a client has to send its request head
JSON = 'application/json'
TEXT = 'text/plain; charset=utf-8'
REASONS = {200: 'OK', 400: 'Bad Request', 401: 'Unauthorized', 404: 'Not Found', 405: 'Method Not Allowed',
           500: 'Internal Server Error', 503: 'Service Unavailable'}
#: where a bearer token for the endpoints may come from when none is given in code
TOKEN_VARIABLE = 'MICROAGENT_HTTP_TOKEN'
#: what probes ask: open even when a token guards the rest (metrics, the contract, the docs page)
OPEN_ROUTES = frozenset({'/health', '/ready'})


@dataclass(frozen=True)
class Page:
    """One response: status, content type and body."""

    status: int
    content_type: str
    body: bytes

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Page:
        return cls(status, JSON, json.dumps(value, indent=2, sort_keys=True).encode() + b'\n')

    @classmethod
    def text(cls, text: str, status: int = 200) -> Page:
        return cls(status, TEXT, text.encode() + b'\n')


#: the first line of ``/metrics`` when no ``PrometheusMiddleware`` counts messages (a comment: scrapers skip it)
PROCESS_ONLY = '# microagent: no PrometheusMiddleware counts messages in '


def process_only(where: str) -> str:
    """Why a scrape holds only process metrics (CPU, memory, GC), as a comment line of the exposition."""
    return (f'{PROCESS_ONLY}{where}, so these are process and runtime metrics only: add '
            "'microagent.ops.metrics.PrometheusMiddleware' to MIDDLEWARES in the marun settings (or to an "
            "agent's middlewares) for message, handler and queue metrics\n")


def exposition(registry: CollectorRegistry | None = None) -> bytes:
    """This process's registry as Prometheus text, first saying why when it counts no messages."""
    from prometheus_client import REGISTRY, generate_latest

    from microagent.ops.metrics import counts_messages

    registry = registry or REGISTRY
    text = generate_latest(registry)
    return text if counts_messages(registry) else process_only('this process').encode() + text


#: reasons each agent is not ready, by agent name; every list empty when all are ready
Readiness = Callable[[], Awaitable[Mapping[str, list[str]]]]


class Endpoints:
    """What the server answers: ``readiness`` is asked on every ``/ready``; the AsyncAPI document
    and the docs page are built on first request and kept (the code does not change while it runs)."""

    def __init__(self, readiness: Readiness, asyncapi: Callable[[], Mapping[str, Any]],
                 docs: Callable[[], str], registry: CollectorRegistry | None = None,
                 metrics: Callable[[], Awaitable[bytes]] | None = None, *, token: str | None = None) -> None:
        self.readiness = readiness
        #: a bearer token every route but ``OPEN_ROUTES`` asks for; None: $MICROAGENT_HTTP_TOKEN, if set
        self.token = token if token is not None else (os.environ.get(TOKEN_VARIABLE) or None)
        self._asyncapi = asyncapi
        self._docs = docs
        self.registry = registry  #: None: prometheus-client's default registry
        self._metrics = metrics  #: the exposition, when it is not this process's registry's
        self._cache: dict[str, Page] = {}
        self.routes: dict[str, Callable[[], Awaitable[Page]]] = {
            '/health': self.health, '/ready': self.ready, '/metrics': self.metrics,
            '/asyncapi.json': self.asyncapi, '/docs': self.docs}

    async def health(self) -> Page:
        return Page.json({'status': 'alive'})

    async def ready(self) -> Page:
        found = await self.readiness()
        waiting = {name: problems for name, problems in found.items() if problems}
        if waiting:
            return Page.json({'status': 'not ready', 'not_ready': waiting}, 503)
        return Page.json({'status': 'ready', 'agents': sorted(found)})

    async def metrics(self) -> Page:
        try:
            from prometheus_client import CONTENT_TYPE_LATEST
        except ImportError:
            return Page.text('/metrics needs prometheus-client: pip install "microagent[prometheus]"', 404)
        if self._metrics is not None:
            return Page(200, CONTENT_TYPE_LATEST, await self._metrics())
        return Page(200, CONTENT_TYPE_LATEST, exposition(self.registry))

    async def asyncapi(self) -> Page:
        page = self._cache.get('asyncapi')
        if page is None:
            page = self._cache['asyncapi'] = Page.json(self._asyncapi())
        return page

    async def docs(self) -> Page:
        page = self._cache.get('docs')
        if page is None:
            page = self._cache['docs'] = Page(200, 'text/html; charset=utf-8', self._docs().encode())
        return page


def parse_address(address: str) -> tuple[str, int]:
    """``'HOST:PORT'`` (``'[::1]:8080'`` for IPv6, port 0: any free one) -> (host, port)."""
    host, sep, port = address.rpartition(':')
    host = host[1:-1] if host.startswith('[') and host.endswith(']') else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f'an HTTP address is HOST:PORT such as 127.0.0.1:8080, got {address!r}')
    return host, int(port)


class HttpServer:
    """A listening server; ``address`` is where it listens (the real port when 0 was asked)."""

    def __init__(self, server: asyncio.Server, endpoints: Endpoints) -> None:
        self.server = server
        self.endpoints = endpoints
        host, port = server.sockets[0].getsockname()[:2]
        self.address = f'[{host}]:{port}' if ':' in host else f'{host}:{port}'
        self.port: int = port

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def start_http(address: str, endpoints: Endpoints) -> HttpServer:
    """Listen on ``address`` (HOST:PORT); raises ``OSError`` when it cannot (port in use, ...)."""
    host, port = parse_address(address)
    server = await asyncio.start_server(lambda r, w: _serve(endpoints, r, w), host, port, limit=MAX_HEAD)
    http = HttpServer(server, endpoints)
    log.info('Serving /health, /ready, /metrics, /asyncapi.json and /docs on http://%s', http.address)
    return http


async def _serve(endpoints: Endpoints, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b'\r\n\r\n')
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            page = Page.text('a request is a request line and headers, ending with an empty line', 400)
        else:
            page = await _answer(endpoints, head)
        reason = REASONS.get(page.status, '')
        extra = {405: 'Allow: GET\r\n', 401: 'WWW-Authenticate: Bearer realm="microagent"\r\n'}.get(page.status, '')
        writer.write(f'HTTP/1.1 {page.status} {reason}\r\nContent-Type: {page.content_type}\r\n'
                     f'Content-Length: {len(page.body)}\r\nCache-Control: no-store\r\n{extra}'
                     'Connection: close\r\n\r\n'.encode('latin-1') + page.body)
        await writer.drain()
    except ConnectionError:
        pass  # the client went away: nothing to answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _answer(endpoints: Endpoints, head: bytes) -> Page:
    parts = head.split(b'\r\n', 1)[0].decode('latin-1').split(' ')
    if len(parts) != 3 or not parts[2].startswith('HTTP/1.'):
        return Page.text('a request line is METHOD TARGET HTTP/1.1', 400)
    method, target, _ = parts
    return await answer(endpoints, method, urlsplit(target).path, _authorization(head))


async def answer(endpoints: Endpoints, method: str, path: str, authorization: bytes | None) -> Page:
    """The page for ``method path``, given the request's ``Authorization`` header (or None): the
    routing, the token check and the errors, the same for this server and ``microagent.ops.asgi``."""
    if method != 'GET':
        return Page.text(f'{method} is not allowed: these endpoints answer GET only', 405)
    route = endpoints.routes.get(path)
    if route is None:
        return Page.text(f'{path} is not here: try {", ".join(endpoints.routes)}', 404)
    if endpoints.token and path not in OPEN_ROUTES and not _authorized(authorization, endpoints.token):
        return Page.text(f'{path} needs the header Authorization: Bearer <token>', 401)
    try:
        return await route()
    except Exception as exc:
        log.exception('GET %s failed', path)
        return Page.text(f'GET {path} failed: {type(exc).__name__}: {exc}', 500)


def _authorization(head: bytes) -> bytes | None:
    for line in head.split(b'\r\n')[1:]:
        name, _, value = line.partition(b':')
        if name.strip().lower() == b'authorization':
            return value.strip()
    return None


def _authorized(authorization: bytes | None, token: str) -> bool:
    """Is ``authorization`` (a header's value) ``Bearer <token>``? Compared in constant time."""
    scheme, _, given = (authorization or b'').partition(b' ')
    return scheme.lower() == b'bearer' and hmac.compare_digest(given.strip(), token.encode())
