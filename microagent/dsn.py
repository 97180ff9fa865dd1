"""DSN helpers: credentials never leave the process in a repr, a log line or ``info()``.

A secret can sit in the userinfo (``redis://user:secret@host``, ``amqp://user:secret@host``; a
username alone, ``redis://token@host``, is hidden too, as some servers take a token there) or in a
query parameter (``redis://host/0?password=secret``, ``unix:///run/redis.sock?password=secret``):
every parameter whose name contains one of :data:`SECRET_WORDS` (any case) has its value hidden.
The text is handled as plain text, not re-encoded, so the rest of the DSN stays as written.
"""
from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus, urlsplit

MASK = '***'
SECRET_WORDS = ('pass', 'pwd', 'token', 'secret', 'api_key', 'apikey', 'auth', 'credential')
_PARAM = re.compile(r'([^&;=]*)(=?)([^&;]*)')


def _is_secret(name: str) -> bool:
    plain = unquote_plus(name).lower()
    return any(word in plain for word in SECRET_WORDS)


def _split(dsn: str) -> tuple[str, str, str, str]:
    """(scheme with ``//``, userinfo with its ``@``, host and path, ``?query#fragment``), the
    authority ending at the first ``/``, ``?`` or ``#`` as redis-py and yarl have it."""
    head, sep, tail = dsn.partition('//')
    if not sep or any(char in head for char in '/?#'):
        head, sep, tail = '', '', dsn
    cut = min((i for i in (tail.find(c) for c in '/?#') if i >= 0), default=len(tail))
    userinfo, at, host = tail[:cut].rpartition('@')
    rest = tail[cut:]
    start = min((i for i in (rest.find(c) for c in '?#') if i >= 0), default=len(rest))
    return head + sep, userinfo + at, host + rest[:start], rest[start:]


def _params(params: str) -> tuple[str, str]:
    """``?query#fragment`` -> (query, fragment); either may hold ``name=value`` pairs."""
    query, _hash, fragment = params.partition('#')
    return query.removeprefix('?'), fragment


def _hide_params(params: str) -> str:
    """``?a=1&password=x#token=y`` -> ``?a=1&password=***#token=***``."""
    def hide(text: str) -> str:
        return _PARAM.sub(lambda m: m[1] + m[2] + (MASK if m[2] and m[3] and _is_secret(m[1]) else m[3]),
                          text)

    query, fragment = _params(params)
    return ('?' + hide(query) if params.startswith('?') else '') + ('#' + hide(fragment) if '#' in params else '')


def hide_password(dsn: str) -> str:
    """``redis://user:secret@host/0?password=secret`` -> ``redis://user:***@host/0?password=***``."""
    scheme, userinfo, path, params = _split(dsn)
    if userinfo:
        user, colon, _password = userinfo[:-1].partition(':')
        userinfo = f'{user}:{MASK}@' if colon else (f'{MASK}@' if user else '@')
    return scheme + userinfo + path + _hide_params(params)


def secrets(dsn: str) -> list[str]:
    """Every secret of a DSN, as written and decoded (longest first), to scrub from error texts."""
    _scheme, userinfo, _path, params = _split(dsn)
    found: list[str] = []
    if userinfo:
        user, colon, password = userinfo[:-1].partition(':')
        found.append(password if colon else user)
    for text in _params(params):
        found.extend(value for name, eq, value in _PARAM.findall(text) if eq and value and _is_secret(name))
    variants = {form for value in found for form in (value, unquote(value), unquote_plus(value))}
    return sorted((v for v in variants if v), key=len, reverse=True)


def scrub(text: str, dsn: str) -> str:
    """``text`` (say, a client's error message) with every secret of ``dsn`` masked."""
    for secret in secrets(dsn):
        text = text.replace(secret, MASK)
    return text


def malformed(dsn: str) -> str | None:
    """Why a host or port of ``dsn`` cannot be read as ``urllib`` (and the clients built on it)
    reads them (``redis://h:99999/0``, ``redis://[::1``), password hidden; None when they can."""
    try:
        parts = urlsplit(dsn)
        for host in parts.netloc.rpartition('@')[2].split(','):  # a cluster or AMQP DSN may list several
            urlsplit(f'//{host}').port  # noqa: B018 - reading it is the check: ValueError when out of range
    except ValueError as exc:
        return f'the DSN {hide_password(dsn)} is malformed: {scrub(str(exc), dsn)}'
    return None
