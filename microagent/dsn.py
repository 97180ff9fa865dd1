"""DSN helpers: credentials never leave the process in a repr, a log line or ``info()``."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def hide_password(dsn: str) -> str:
    """``redis://user:secret@host/0`` -> ``redis://user:***@host/0``."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return '***'
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rpartition('@')[2]
    user = f'{parts.username}:***@' if parts.username else ':***@'
    return urlunsplit((parts.scheme, user + netloc, parts.path, parts.query, parts.fragment))
