"""A string that matches a regular expression: what ``sample_json`` gives a ``pattern`` string.

It walks the tree Python's own regex parser builds (``re._parser``; typed by the ``sre_parse``
stubs), so the syntax understood is exactly Python's. Lookarounds and anchors are skipped: they
constrain, they add no characters; a pattern built on them may get a string that does not match,
which the caller checks.
"""
from __future__ import annotations

import importlib
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sre_constants as _c
    import sre_parse as _parser
else:
    _parser = importlib.import_module('re._parser')
    _c = importlib.import_module('re._constants')

#: characters tried, in order, for a class or a negated class: readable ones first
_CANDIDATES = 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_. @:/+'
_CATEGORY = {
    _c.CATEGORY_DIGIT: '0123456789', _c.CATEGORY_NOT_DIGIT: 'abcxyz', _c.CATEGORY_SPACE: ' ',
    _c.CATEGORY_NOT_SPACE: 'abcxyz', _c.CATEGORY_WORD: 'abcxyz019_', _c.CATEGORY_NOT_WORD: '-. ',
}
_MAX_EXTRA = 4  # repeats beyond the minimum a random sample may add


class _Generator:
    def __init__(self, rng: random.Random | None) -> None:
        self.rng = rng
        self.groups: dict[int, str] = {}

    def pick(self, options: str) -> str:
        return options[0] if self.rng is None else self.rng.choice(options)

    def sequence(self, items: Any) -> str:
        return ''.join(self.item(op, av) for op, av in items)

    def item(self, op: Any, av: Any) -> str:
        if op is _c.LITERAL:
            return chr(av)
        if op is _c.NOT_LITERAL:
            return self.pick([ch for ch in _CANDIDATES if ord(ch) != av])  # type: ignore[arg-type]
        if op is _c.ANY:
            return self.pick('abcxyz')
        if op is _c.IN:
            return self.pick(self.members(av))
        if op is _c.BRANCH:
            branches = av[1]
            return self.sequence(branches[0] if self.rng is None else self.rng.choice(branches))
        if op is _c.SUBPATTERN:
            group, text = av[0], self.sequence(av[3])
            if group is not None:
                self.groups[group] = text
            return text
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, 'POSSESSIVE_REPEAT', None)):
            low, high, body = av
            high = low + _MAX_EXTRA if high is _c.MAXREPEAT else high
            count = max(low, min(1, high)) if self.rng is None else self.rng.randint(low, min(high, low + _MAX_EXTRA))
            return ''.join(self.sequence(body) for _ in range(count))
        if op is _c.GROUPREF:
            return self.groups.get(av, '')
        if op is _c.CATEGORY:
            return self.pick(_CATEGORY.get(av, 'a'))
        if op is getattr(_c, 'ATOMIC_GROUP', None):
            return self.sequence(av)
        return ''  # AT (anchors), ASSERT, ASSERT_NOT, GROUPREF_EXISTS: no characters of their own

    def members(self, items: Any) -> str:
        """The characters a class ``[...]`` accepts, among the candidates (or its own literals)."""
        negate = bool(items) and items[0][0] is _c.NEGATE
        body = items[1:] if negate else items

        def accepts(ch: str) -> bool:
            code = ord(ch)
            for op, av in body:
                if (op is _c.LITERAL and code == av) or (op is _c.RANGE and av[0] <= code <= av[1]) or (
                        op is _c.CATEGORY and ch in _CATEGORY.get(av, '')):
                    return True
            return False

        if negate:
            return ''.join(ch for ch in _CANDIDATES if not accepts(ch)) or '~'
        own = ''.join(chr(av) if op is _c.LITERAL else chr(av[0]) if op is _c.RANGE else _CATEGORY.get(av, 'a')[0]
                      for op, av in body if op in (_c.LITERAL, _c.RANGE, _c.CATEGORY))
        readable = ''.join(ch for ch in _CANDIDATES if accepts(ch))
        return readable or own or 'a'


def regex_sample(pattern: str, rng: random.Random | None = None) -> str:
    """A string ``re.search(pattern, s)`` matches (the shortest readable one without ``rng``)."""
    return _Generator(rng).sequence(_parser.parse(pattern))
