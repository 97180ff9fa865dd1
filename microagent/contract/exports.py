"""Read an exported contract for ``microagent schema diff``: a directory of JSON schemas (as
``schemas/json``: ``signals/NAME.json``, ``signals/NAME.answer.json``, ``queues/NAME.json``), an
AsyncAPI document written by ``microagent schema --asyncapi``, or ``git:REF[:PATH]``, the committed
export at a git ref (PATH defaults to ``schemas/json``), read with ``git show`` and no checkout.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from microagent.contract.compatibility import Declaration, JsonDict, Kind
from microagent.errors import InvalidArgument

DEFAULT_GIT_PATH = 'schemas/json'
_COMPONENTS = '#/components/schemas/'


def load(source: str, cwd: Path | None = None) -> list[Declaration]:
    """The declarations of ``source``; InvalidArgument names what cannot be read."""
    if source.startswith('git:'):
        return from_git(source, cwd)
    path = Path(cwd or '.') / source
    if path.is_dir():
        return from_files(read_dir(path), source)
    if path.is_file():
        return from_document(_parse(path.read_text(encoding='utf-8'), source), source)
    raise InvalidArgument(f'{source!r}: no such file or directory (nor git:REF[:PATH])')


def from_files(files: Mapping[str, str], where: str = 'the export') -> list[Declaration]:
    """Declarations from exported files (relative path -> JSON text); ``asyncapi.json`` alone counts
    when there are no per-declaration files."""
    found: dict[tuple[Kind, str], JsonDict] = {}
    answers: dict[str, JsonDict] = {}
    for path in sorted(files):
        kind, _, name = path.partition('/')
        if kind not in ('signals', 'queues') or '/' in name or not name.endswith('.json'):
            continue
        schema = _parse(files[path], f'{where}: {path}')
        if kind == 'signals' and name.endswith('.answer.json'):
            answers[name.removesuffix('.answer.json')] = schema
        else:
            found['signal' if kind == 'signals' else 'queue', name.removesuffix('.json')] = schema
    if not found and 'asyncapi.json' in files:
        return from_document(_parse(files['asyncapi.json'], f'{where}: asyncapi.json'), where)
    if not found:
        raise InvalidArgument(f'{where}: no signals/*.json, queues/*.json or asyncapi.json')
    return _declarations(found, answers)


def from_document(document: Any, where: str) -> list[Declaration]:
    if not isinstance(document, dict) or not str(document.get('asyncapi', '')).startswith('3.'):
        raise InvalidArgument(f'{where}: not an AsyncAPI 3 document')
    return from_asyncapi(document)


def from_asyncapi(document: JsonDict) -> list[Declaration]:
    """Declarations from the ``x-microagent`` channels of an AsyncAPI 3.0 document; each payload made
    standalone (its component schemas become ``$defs``)."""
    components: JsonDict = document.get('components') or {}
    defs = {name: _rewrite(schema) for name, schema in (components.get('schemas') or {}).items()}
    messages: JsonDict = components.get('messages') or {}

    def standalone(schema: Any) -> JsonDict:
        body = _rewrite(schema)
        return {**body, '$defs': defs} if defs and isinstance(body, dict) else _as_dict(body)

    def message(ref: Any) -> JsonDict:
        key = str(ref.get('$ref', '') if isinstance(ref, dict) else '').rpartition('/')[2]
        value = messages.get(key)
        return value if isinstance(value, dict) else {}

    answers: dict[str, JsonDict] = {}
    found: dict[tuple[Kind, str], JsonDict] = {}
    rpc: set[str] = set()
    for channel in (document.get('channels') or {}).values():
        ext = channel.get('x-microagent') or {}
        refs = list((channel.get('messages') or {}).values())
        if ext.get('kind') == 'response':
            for ref in refs:
                body = message(ref)
                name = str(body.get('name', '')).removesuffix('.answer')
                payload = body.get('payload') or {}
                answers[name] = standalone(payload.get('additionalProperties', {}))
        elif ext.get('kind') in ('signal', 'queue') and refs:
            kind: Kind = 'signal' if ext['kind'] == 'signal' else 'queue'
            found[kind, str(ext['name'])] = standalone(message(refs[0]).get('payload', {}))
            if ext.get('rpc'):
                rpc.add(str(ext['name']))
    return _declarations(found, answers, rpc)


def _declarations(found: Mapping[tuple[Kind, str], JsonDict], answers: Mapping[str, JsonDict],
                  rpc: set[str] | None = None) -> list[Declaration]:
    """Each signal with its answer (if any), each queue, sorted by kind and name; ``rpc``: the
    signals the export calls answered, so a missing answer schema is seen, not taken as none."""
    return [Declaration(kind, name, schema, answers.get(name) if kind == 'signal' else None,
                        kind == 'signal' and (name in answers or name in (rpc or ())))
            for (kind, name), schema in sorted(found.items())]


def from_git(source: str, cwd: Path | None = None) -> list[Declaration]:
    """``git:REF[:PATH]``: the files under PATH (from the repository root) at REF."""
    ref, _, path = source.removeprefix('git:').partition(':')
    path = path.strip('/') or DEFAULT_GIT_PATH
    if not ref:
        raise InvalidArgument(f'{source!r}: expected git:REF[:PATH]')
    listing = _git(['ls-tree', '-r', '--name-only', '--full-tree', ref, '--', path], source, cwd)
    names = [line for line in listing.splitlines() if line.endswith('.json')]
    if not names:
        raise InvalidArgument(f'{source!r}: no JSON file under {path!r} at {ref!r}')
    if names == [path]:  # one file: an AsyncAPI document
        return from_document(_parse(_git(['show', f'{ref}:{path}'], source, cwd), source), source)
    files = {name.removeprefix(path + '/'): _git(['show', f'{ref}:{name}'], source, cwd) for name in names}
    return from_files(files, source)


def _git(args: list[str], source: str, cwd: Path | None) -> str:
    try:
        done = subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise InvalidArgument(f'{source!r}: cannot run git: {exc}') from None
    if done.returncode:
        raise InvalidArgument(f'{source!r}: git {args[0]}: {done.stderr.strip() or "failed"}')
    return done.stdout


def read_dir(root: Path) -> dict[str, str]:
    """The JSON files under ``root``: relative POSIX path -> text."""
    return {path.relative_to(root).as_posix(): path.read_text(encoding='utf-8')
            for path in sorted(root.rglob('*.json'))}


def _parse(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f'{where}: not JSON: {exc}') from None


def _rewrite(node: Any) -> Any:
    """``#/components/schemas/X`` refs as ``#/$defs/X``."""
    if isinstance(node, dict):
        return {key: (f'#/$defs/{value.removeprefix(_COMPONENTS)}'
                      if key == '$ref' and isinstance(value, str) and value.startswith(_COMPONENTS)
                      else _rewrite(value)) for key, value in node.items()}
    if isinstance(node, list):
        return [_rewrite(item) for item in node]
    return node


def _as_dict(node: Any) -> JsonDict:
    return node if isinstance(node, dict) else {} if node is True else {'not': {}}
