"""Checking a Redis DSN when a bus or broker is built, not at its first connection.

redis-py ignores a database that is not a number (``redis://host/x`` is database 0) and fails late,
or with a bare ``ValueError``, on a port out of range or an unbalanced ``[``. Here each is an
``InvalidArgument`` naming the DSN (its secrets hidden) and the part that is wrong. Schemes:
``redis://``, ``rediss://``, ``unix://`` and the cluster ones of ``cluster.py``.
"""
from __future__ import annotations

from urllib.parse import parse_qs, unquote

from microagent.dsn import hide_password
from microagent.errors import InvalidArgument

__all__ = ['MAX_DB', 'check_dsn', 'host_port']

#: the largest database index Redis accepts (its ``databases`` setting is a C int)
MAX_DB = 2 ** 31 - 1
_PLAIN = ('redis', 'rediss', 'unix')
_CLUSTER = ('redis+cluster', 'rediss+cluster')


def _bad(dsn: str | None, part: str, detail: str) -> InvalidArgument:
    """``dsn`` None: not shown, as it cannot be told apart from its secrets."""
    shown = '(not shown)' if dsn is None else repr(hide_password(dsn))
    return InvalidArgument(f'Redis DSN {shown}: the {part} {detail}')


def host_port(dsn: str, text: str, default: int = 6379) -> tuple[str, int]:
    """(host, port) of ``host``, ``host:port``, ``[ipv6]`` or ``[ipv6]:port``."""
    if text.startswith('['):
        host, closed, tail = text[1:].partition(']')
        if not closed:
            raise _bad(dsn, 'host', f"{text!r} opens '[' and never closes it")
        if tail and not tail.startswith(':'):
            raise _bad(dsn, 'host', f'{text!r} has {tail!r} after its closing bracket')
        port = tail[1:]
    elif ']' in text:
        raise _bad(dsn, 'host', f"{text!r} closes ']' that was never opened")
    else:
        host, colon, port = text.rpartition(':')
        if not colon:
            host, port = text, ''
        elif ':' in host:
            raise _bad(dsn, 'host', f'{text!r} is an IPv6 address without brackets ([::1]:6379)')
    if not port:
        return host, default
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise _bad(dsn, 'port', f'must be a number from 1 to 65535, got {port!r}')
    return host, int(port)


def _db(dsn: str, text: str, where: str) -> int:
    if not text.isdigit() or int(text) > MAX_DB:
        raise _bad(dsn, f'database ({where})', f'must be a number from 0 to {MAX_DB}, got {text!r}')
    return int(text)


def check_dsn(dsn: str) -> None:
    """Raise ``InvalidArgument`` naming what is wrong in a Redis DSN: the scheme, a host, a port,
    the database (in the path or ``?db=``)."""
    scheme, sep, rest = dsn.partition('://')
    if not sep or scheme.lower() not in _PLAIN + _CLUSTER:
        raise _bad(dsn, 'scheme', f'must be one of {", ".join(_PLAIN + _CLUSTER)}, got {scheme if sep else dsn!r}')
    cut = min((i for i in (rest.find(c) for c in '/?#') if i >= 0), default=len(rest))
    hosts, tail = rest[:cut].rpartition('@')[2], rest[cut:]
    before, _, fragment = tail.partition('#')
    path, _, query = before.partition('?')
    if '@' in path + fragment or ('@' in query and '=' not in query.partition('@')[0]):  # never echo it
        raise _bad(None, 'password', "holds '/', '?' or '#' as is: percent-encode them (%2F, %3F, %23)")
    dbs = [_db(dsn, value, '?db=') for value in parse_qs(query).get('db', [])]
    if scheme.lower() == 'unix':
        return  # the path is the socket's
    if path.strip('/'):
        dbs.append(_db(dsn, unquote(path[1:]), 'path'))
    if scheme.lower() in _CLUSTER:
        if any(dbs):
            raise _bad(dsn, 'database', f'of a Redis Cluster can only be 0, got {max(dbs)}')
        for part in hosts.split(','):
            host, _ = host_port(dsn, part.strip())
            if not host:
                raise _bad(dsn, 'host', f'list must name host:port pairs, got {part!r}')
    elif ',' in hosts:
        raise _bad(dsn, 'host', f'must be one, got {hosts!r} (several nodes: redis+cluster://)')
    else:
        host_port(dsn, hosts)
