"""Several RabbitMQ hosts in one DSN, for a cluster: ``amqp://user:pass@h1:5672,h2:5672,h3/vhost``
(or a list of whole DSNs). The link connects to one at a time and, when that connection breaks or
cannot be opened, moves on to the next, round robin; the userinfo, vhost and query are shared.

A cluster's queues are reachable through any of its nodes (a quorum queue's leader may sit on
another node: RabbitMQ forwards), so any host will do; the order only says where to try first.
"""
from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from microagent.dsn import hide_password
from microagent.errors import InvalidArgument

DEFAULT_PORTS = {'amqp': 5672, 'amqps': 5671}


def split_hosts(dsn: str | Sequence[str]) -> list[str]:
    """One single-host DSN per host: ``amqp://u:p@a,b:5673/v`` -> ``amqp://u:p@a:5672/v``,
    ``amqp://u:p@b:5673/v``. A list is taken as given (each may itself name several hosts)."""
    if not isinstance(dsn, str):
        if not dsn:
            raise InvalidArgument('An AMQP DSN list names at least one server')
        return [one for item in dsn for one in split_hosts(item)]
    scheme, userinfo, hosts, tail = _parts(dsn)
    if scheme not in DEFAULT_PORTS or '://' not in dsn:
        raise InvalidArgument(f'An AMQP DSN starts with amqp:// or amqps://, got {hide_password(dsn)!r}')
    if ',' not in hosts:
        _check(dsn)
        return [dsn]
    out: list[str] = []
    for host in hosts.split(','):
        host = host.strip()
        if not host:
            raise InvalidArgument(f'An empty host in AMQP DSN {hide_password(dsn)!r}')
        if not _has_port(host):
            host = f'{host}:{DEFAULT_PORTS[scheme]}'
        one = f'{scheme}://{userinfo}{host}{tail}'
        _check(one)
        out.append(one)
    return out


def login(dsn: str) -> tuple[str, str]:
    """The user name and the vhost a single-host DSN logs in with (as aiormq reads them: guest and
    ``/`` by default), never its password."""
    parts = urlsplit(dsn)
    vhost = unquote(parts.path[1:]) if parts.path not in ('', '/') else '/'
    return unquote(parts.username or 'guest'), vhost


def join_hosts(dsns: Sequence[str]) -> str:
    """The one-string form of several single-host DSNs (for ``repr`` and ``info()``)."""
    if len(dsns) == 1:
        return dsns[0]
    scheme, userinfo, _, tail = _parts(dsns[0])
    hosts = ','.join(_parts(one)[2] for one in dsns)
    return f'{scheme}://{userinfo}{hosts}{tail}'


def _parts(dsn: str) -> tuple[str, str, str, str]:
    """``scheme://userinfo@hosts/vhost?query`` as (scheme, ``userinfo@`` or '', hosts, the rest)."""
    scheme, _, rest = dsn.partition('://')
    cut = min((i for i in (rest.find(c) for c in '/?#') if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:cut].rpartition('@')
    return scheme, userinfo + at, hosts, rest[cut:]


def _has_port(host: str) -> bool:
    if host.startswith('['):  # [::1] or [::1]:5672
        return ']:' in host
    return ':' in host


def _check(dsn: str) -> None:
    try:
        urlsplit(dsn).port  # noqa: B018  # a bad port is a ValueError here, not deep in aiormq
    except ValueError as exc:
        raise InvalidArgument(f'AMQP DSN {hide_password(dsn)!r}: {exc}') from None
