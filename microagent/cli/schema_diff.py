"""``microagent schema diff OLD NEW [--require backward|forward|full|none] [--format text|json]``.

Exit codes: 0 the change meets the required level (BACKWARD unless ``--require`` says otherwise;
``--require none`` only reports), 1 it does not, 2 usage: OLD or NEW cannot be read. A gate that
passes a breaking change unless told otherwise is no gate, hence the default.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from microagent.contract.compatibility import DeclarationDiff, Level, Report, diff
from microagent.contract.exports import load
from microagent.errors import InvalidArgument

EXIT_OK, EXIT_INCOMPATIBLE, EXIT_USAGE = 0, 1, 2
LEVELS = {'backward': Level.BACKWARD, 'forward': Level.FORWARD, 'full': Level.FULL}
REQUIRE: dict[str, Level | None] = {**LEVELS, 'none': None}  #: none: only report
SOURCES = ('a directory of exported JSON schemas (as schemas/json), an AsyncAPI 3 file, or '
           'git:REF[:PATH] (the committed export at a git ref; PATH defaults to schemas/json)')
MEANING = {
    Level.FULL: 'old and new versions read each other',
    Level.BACKWARD: 'upgrade consumers first: new consumers read old messages',
    Level.FORWARD: 'upgrade producers first: old consumers read new messages',
    Level.BREAKING: 'neither version reads the other',
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='microagent schema diff',
        description='Classify the changes from OLD to NEW per signal and queue, as Confluent Schema '
                    'Registry does: BACKWARD (new consumers read old messages), FORWARD (old consumers '
                    'read new messages), FULL (both), BREAKING (neither). An RPC answer is read by the '
                    'callers: it counts the other way round.',
        epilog='Exit codes: 0 the required level is met (BACKWARD by default; always with --require none); '
               '1 it is not; 2 OLD or NEW cannot be read.')
    parser.add_argument('old', metavar='OLD', help=SOURCES)
    parser.add_argument('new', metavar='NEW', help='as OLD')
    parser.add_argument('--require', choices=tuple(REQUIRE), default='backward',
                        help='exit 1 unless every change meets it (default: %(default)s; none: only report)')
    parser.add_argument('--format', choices=('text', 'json'), default='text', help='default: %(default)s')
    return parser


def diff_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        report = diff(load(args.old), load(args.new))
    except InvalidArgument as exc:
        print(f'microagent schema diff: {exc}', file=sys.stderr)
        return EXIT_USAGE
    required = REQUIRE[args.require]
    if args.format == 'json':
        sys.stdout.write(json.dumps(report.to_dict(required), indent=2, ensure_ascii=False) + '\n')
    else:
        sys.stdout.write(render(report, required))
    return EXIT_OK if required is None or report.meets(required) else EXIT_INCOMPATIBLE


def render(report: Report, required: Level | None = None) -> str:
    """The report for a person: each changed declaration, its level, each change and who it hurts."""
    lines: list[str] = []
    for item in report.changed:
        lines.append(f'{item.kind} {item.name}: {item.level.value}' + _status(item))
        width = max((len(change.field) for change in item.changes), default=0)
        for change in item.changes:
            reason = f': {change.reason}' if change.reason else ''
            lines.append(f'  {change.field.ljust(width)}  {change.level.value.ljust(8)}  {change.what}{reason}')
    if report.unchanged:
        lines.append(f'unchanged: {", ".join(report.unchanged)}')
    if not report.changed:
        lines.append('no change: FULL')
    else:
        lines.append(f'overall: {report.level.value} ({MEANING[report.level]})')
    if required is not None:
        failing = report.failing(required)
        if failing:
            lines.append(f'required {required.value}: NOT met by ' + ', '.join(_culprit(d, required) for d in failing))
        else:
            lines.append(f'required {required.value}: met')
    return '\n'.join(lines) + '\n'


def _status(item: DeclarationDiff) -> str:
    if item.status == 'added':
        return ' (added)'
    if item.status == 'removed':
        return ' (removed: old producers may still send it, and no new consumer reads it)'
    return ''


def _culprit(item: DeclarationDiff, required: Level) -> str:
    fields = [c.field for c in item.changes if not c.level.meets(required)]
    return f'{item.kind} {item.name}' + (f' ({", ".join(dict.fromkeys(fields))})' if fields else '')
