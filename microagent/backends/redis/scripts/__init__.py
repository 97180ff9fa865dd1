"""The Lua scripts of the Redis broker, read from the ``.lua`` files beside this module at import.

The files are package data (``pyproject.toml``), read with ``importlib.resources``, so an installed
wheel finds them as a source checkout does. A script names the helper functions it calls on its
``-- uses:`` line; each helper is a file of ``lib/``, put before the script's body in that order.
What each script takes (KEYS, ARGV) and returns is said at the top of its file; the keys are those
of ``keys.py``.
"""
from __future__ import annotations

from importlib.resources import files

from microagent.backends.redis.keys import DELAYED_ID_LENGTH

__all__ = ['GROUP_SCRIPTS', 'NAMES', 'SCRIPTS', 'load']

_USES = '-- uses:'
#: what ``lib/move_due.lua`` names where a ``Q:delayed`` member's message starts (after its id)
_ID_END = 'DELAYED_ID_END'


def _read(path: str) -> str:
    return files(__name__).joinpath(path).read_text(encoding='utf-8')


def load(name: str) -> str:
    """The text of script ``name`` (``fetch`` for ``fetch.lua``), its helpers first."""
    body = _read(f'{name}.lua')
    helpers = next((line[len(_USES):] for line in body.splitlines() if line.startswith(_USES)), '')
    used = [_read(f'lib/{helper.strip()}.lua') for helper in helpers.split(',') if helper.strip()]
    return ''.join(used).replace(_ID_END, str(DELAYED_ID_LENGTH + 1)) + body


#: the scripts the queue transport registers, by the name it calls them
NAMES = ('FETCH', 'ACK', 'RETRY', 'DEAD_LETTER', 'RELEASE', 'RECLAIM', 'REQUEUE', 'REMOVE_DEAD', 'MOVE_DUE',
         'DELAY', 'BEAT', 'RATE', 'PUT')
SCRIPTS: dict[str, str] = {name: load(name.lower()) for name in NAMES}

#: the scripts of signal groups (``groups.py``; the bus runs ``GROUP_PUBLISH``)
GROUP_NAMES = ('GROUP_PUBLISH', 'GROUP_CLAIM', 'GROUP_REFRESH', 'GROUP_SETTLE', 'GROUP_REQUEUE', 'GROUP_REMOVE_DEAD',
               'GROUP_DEPTH', 'GROUP_LEAVE')
GROUP_SCRIPTS: dict[str, str] = {name: load(name.lower()) for name in GROUP_NAMES}
