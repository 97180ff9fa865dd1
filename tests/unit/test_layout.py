"""The layout's rules, read from the source (ast), so they hold as the code changes: no import circle
(imports inside functions and under TYPE_CHECKING count), arrows point down, modules stay small, and
backend names stay in their backend package and the registry."""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / 'microagent'
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob('*.py')}


def _is_package(name: str) -> bool:
    return MODULES[name].name == '__init__.py'


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ''
    base = importer.split('.') if _is_package(importer) else importer.split('.')[:-1]
    base = base[:len(base) - node.level + 1]
    return '.'.join(base + ([node.module] if node.module else []))


def _imports(name: str) -> Iterator[str]:
    """Every module of the package that ``name`` imports, wherever the import statement stands."""
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(name, node)
            targets = [f'{source}.{alias.name}' if f'{source}.{alias.name}' in MODULES else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` names a; `from a import f` names a
                target = target.rpartition('.')[0]
            if target.startswith('microagent') and target != name:
                yield target


GRAPH = {name: sorted(set(_imports(name))) for name in MODULES}


def _cycle_from(start: str) -> list[str] | None:
    path: list[str] = []
    on_path: set[str] = set()
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in GRAPH[node]:
            if target in on_path:
                return [*path[path.index(target):], target]
            if target not in done and (found := visit(target)):
                return found
        on_path.discard(path.pop())
        done.add(node)
        return None

    return visit(start)


def test_no_import_circle() -> None:
    circles = {' -> '.join(cycle) for name in sorted(GRAPH) if (cycle := _cycle_from(name))}
    assert not circles, 'import circles:\n' + '\n'.join(sorted(circles))


def _under(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + '.') for prefix in prefixes)


ENGINES = ('microagent.bus', 'microagent.broker')
UPPER = ('microagent.cli', 'microagent.ops', 'microagent.testing', 'microagent.tools', 'microagent.launcher')

# (who, may not import, why)
RULES = [
    (ENGINES, ('microagent.agent', 'microagent.backends', 'microagent.contract', *UPPER),
     'an engine knows the transport protocols only'),
    (('microagent.contract',), ('microagent.agent', *ENGINES, 'microagent.backends', *UPPER),
     'the contract is functions over declarations'),
    (('microagent.backends',), ('microagent.agent', 'microagent.contract', *UPPER),
     'a backend is a transport plus the classes that join it to an engine'),
    (('microagent.ops',), ('microagent.backends', 'microagent.cli', 'microagent.testing', 'microagent.tools'),
     'operations work on any backend'),
]


def _forbidden(importer: str, target: str) -> str | None:
    for who, banned, why in RULES:
        if _under(importer, *who) and _under(target, *banned) and target != 'microagent.backends':  # the registry
            return why
    if _under(importer, 'microagent.backends') and importer.count('.') >= 3 and not _is_package(importer) \
            and _under(target, *ENGINES):
        return 'a transport module never imports an engine: only its package __init__ joins them'
    return None


def test_arrows_point_down() -> None:
    wrong = [f'{importer} -> {target}: {why}' for importer, targets in GRAPH.items() for target in targets
             if (why := _forbidden(importer, target))]
    assert not wrong, '\n'.join(wrong)


def test_the_core_never_imports_a_backend_module() -> None:
    core = [name for name in MODULES if name.count('.') == 1 and name not in ('microagent.launcher',)
            and not _is_package(name)]
    wrong = [f'{name} -> {target}' for name in core for target in GRAPH[name]
             if _under(target, 'microagent.backends') and target != 'microagent.backends']
    assert not wrong


@pytest.mark.parametrize('name', sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f'{name} has {lines} lines (at most {MAX_LINES}: one concept a module)'


# what only a backend package and the registry may name: DSN schemes, the header names backends keep
# for themselves, and the backend classes (the test kit runs on the embedded memory backend by default)
KNOWN_SCHEMES = ('redis', 'rediss', 'unix', 'redis+cluster', 'rediss+cluster', 'amqp', 'amqps', 'nats', 'memory')
KNOWN_HEADERS = ('x-attempt', 'x-reason', 'x-dead-at', 'x-delay', 'x-due', 'x-redelivered', 'x-death',
                 'x-first-death', 'x-last-death', 'x-delivery-count', 'nats-msg-id', 'nats-expected-stream')
KNOWN_CLASSES = tuple(f'{prefix}{kind}' for prefix in ('Redis', 'AMQP', 'NATS', 'Memory')
                      for kind in ('SignalBus', 'Broker', 'BusTransport', 'QueueTransport', 'Hub'))
MAY_NAME = ('microagent.backends', 'microagent.tools', 'microagent.testing.group', 'microagent.testing.mocks')


def _code_strings_and_names(tree: ast.AST) -> Iterator[tuple[int, str]]:
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value
        elif isinstance(node, ast.Name):
            yield node.lineno, node.id
        elif isinstance(node, ast.alias):
            yield node.lineno, node.name


def _backend_word(text: str) -> str | None:
    lower = text.lower()
    for scheme in KNOWN_SCHEMES:
        if f'{scheme}://' in lower:
            return f'{scheme}://'
    if lower in KNOWN_HEADERS or lower.startswith(('x-death', 'nats-')):
        return text
    return next((name for name in KNOWN_CLASSES if name in text), None)


def test_backend_names_stay_in_their_package_and_the_registry() -> None:
    found = [f'{name}:{line}: {word}' for name, path in sorted(MODULES.items()) if not _under(name, *MAY_NAME)
             for line, text in _code_strings_and_names(ast.parse(path.read_text()))
             if (word := _backend_word(text))]
    assert not found, 'backend names outside microagent/backends:\n' + '\n'.join(found)
