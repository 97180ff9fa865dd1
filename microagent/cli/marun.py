"""``marun``: run a group of agents, one process each, and supervise them as one.

    marun pkg.settings [pkg.other_settings ...] [--grace 10] [--single-process]
          [--log-level INFO] [--log-format text|json] [--http HOST:PORT] [--reload]

When an agent process exits or crashes, the others are stopped and ``marun`` exits with 1.
SIGINT or SIGTERM stops every agent gracefully (``pre_stop`` hooks, no new work, in-flight handlers
get ``--grace`` seconds) and ``marun`` exits with 0; a second signal, 1 s or more after the first,
kills what is left (one sooner is the same stop: ``timeout`` and a terminal signal the whole group). Each agent
process watches a pipe from ``marun`` and stops by itself when ``marun`` is gone, even after a
``kill -9``. A bad configuration exits with 2 before any process starts. Every process that runs
agents (each agent process, or the one of ``--single-process``) first calls its settings' ``SETUP``.

``--http HOST:PORT`` serves ``/health``, ``/ready``, ``/metrics``, ``/asyncapi.json`` and ``/docs``
for the whole group on one port (``microagent.ops.http``); how the supervisor answers for agent
processes is in ``microagent.ops.probes``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from microagent.agent import DEFAULT_GRACE, MicroAgent, close_engines, stop_within
from microagent.cli.config import (
    AgentConfig,
    ConfigError,
    load_group,
    registered_backend,
    run_setups,
    with_replicas,
)
from microagent.cli.fleet_http import fleet_endpoints
from microagent.cli.inputs import read_token, replica_counts, seconds_or_zero
from microagent.cli.legacy import init_agent, load_configuration
from microagent.cli.reload import run_reloading
from microagent.errors import ConnectionFailed, InvalidArgument, ServerInterrupt
from microagent.logs import FORMATS, LEVELS, current_agent, setup_logging
from microagent.ops.http import TOKEN_VARIABLE, Endpoints, HttpServer, parse_address, start_http
from microagent.ops.probes import AgentProcess, LocalAgents, answer_questions, group_metrics, group_readiness
from microagent.readiness import reach

if TYPE_CHECKING:
    pass

__all__ = ['ConfigError', 'main', 'run_agents', 'run_group']
__all__ += ['ServerInterrupt', 'init_agent', 'load_configuration']  # the 1.x names

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_UNREACHABLE = 0, 1, 2, 3
KILL_MARGIN = 10.0  # beyond the grace: how long marun waits before it kills an agent process
#: seconds after a first SIGINT/SIGTERM in which another one is the same stop, not a second one
SIGNAL_ECHO = 1.0

log = logging.getLogger('microagent.launcher')
_early_stop = False


def build_parser(prog: str = 'marun') -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description='Run a group of microagents, one process each.')
    parser.add_argument('modules', metavar='MODULE', nargs='+',
                        help='configuration module with AGENT, BUS and BROKER dicts (e.g. myapp.settings)')
    parser.add_argument('--grace', type=seconds_or_zero, default=DEFAULT_GRACE, metavar='SECONDS',
                        help='on stop, how long in-flight handlers may run (default: %(default)s)')
    parser.add_argument('--single-process', action='store_true',
                        help='run every agent in this process, in one event loop (memory backend, tests)')
    parser.add_argument('--log-level', default='INFO', type=str.upper, choices=LEVELS)
    parser.add_argument('--log-format', default='text', choices=FORMATS)
    parser.add_argument('--http', metavar='HOST:PORT',
                        help='serve /health, /ready, /metrics, /asyncapi.json and /docs of the group here')
    parser.add_argument('--http-token-file', metavar='PATH',
                        help='a bearer token (read from this file, never given on the command line) that '
                             '/metrics, /asyncapi.json and /docs ask for; also $MICROAGENT_HTTP_TOKEN')
    parser.add_argument('--replicas', metavar='NAME=N', action='append', default=[],
                        help="run N processes of the agent NAME (overrides its entry's 'replicas'); repeatable")
    parser.add_argument('--reload', action='store_true',
                        help='while developing: run the group again when a *.py file under the current directory '
                             '(or a --reload-dir) changes (extra: reload)')
    parser.add_argument('--reload-dir', metavar='DIR', action='append', default=[], help='watch DIR too; repeatable')
    parser.add_argument('--agent-process', metavar='NAME', help=argparse.SUPPRESS)
    parser.add_argument('--watch-fd', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--ready-fd', type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = 'marun') -> int:
    """The ``marun`` command; returns the exit code."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.grace < 0:
        parser.error('--grace must be >= 0')
    if args.http is not None:
        try:
            parse_address(args.http)
        except InvalidArgument as exc:
            parser.error(f'--http: {exc}')
    replicas = replica_counts(parser, args.replicas)
    if args.http_token_file is not None:
        os.environ[TOKEN_VARIABLE] = read_token(parser, args.http_token_file)  # the server reads it there
    if os.getcwd() not in sys.path and '' not in sys.path:
        sys.path.insert(0, os.getcwd())  # `marun myapp.settings` from the project directory
    setup_logging(args.log_level, args.log_format, args.agent_process or prog.split()[0])
    try:
        if args.reload and not args.agent_process:
            return run_reloading(args)
        if args.agent_process:
            return _agent_process(args.agent_process, args.modules, args.grace, args.watch_fd, args.ready_fd,
                                  replicas)
        return run_group(args.modules, grace=args.grace, single_process=args.single_process,
                         log_level=args.log_level, log_format=args.log_format, http=args.http, replicas=replicas)
    except ConfigError as exc:
        print(f'{prog}: error: {exc}', file=sys.stderr)
        return EXIT_CONFIG


def run_group(modules: Sequence[str], *, grace: float = DEFAULT_GRACE, single_process: bool = False,
              stop_after: float | None = None, log_level: str = 'INFO', log_format: str = 'text',
              http: str | None = None, replicas: Mapping[str, int] | None = None) -> int:
    """Check the configuration, then run the group until a signal, a failure or ``stop_after``
    seconds; returns the exit code. Raises ``ConfigError`` before anything starts (and when the
    ``http`` address cannot be listened on). Each process that runs agents (this one with
    ``single_process``) first runs the SETUP of their modules. ``replicas`` overrides the number of
    copies of agents by name; each copy runs in its own process (in this one with ``single_process``)."""
    replicas = dict(replicas or {})
    agents = [copy for agent in with_replicas(load_group(modules), replicas) for copy in agent.copies()]
    if not single_process:
        _check_memory_sharing(agents)
    if single_process:
        run_setups(agents)
    try:
        if single_process:
            return asyncio.run(_single_process(modules, agents, grace, stop_after, http))
        return asyncio.run(_supervise(modules, agents, grace, stop_after, [
            '--grace', str(grace), '--log-level', log_level, '--log-format', log_format,
            *(f'--replicas={name}={count}' for name, count in replicas.items())], http))
    except (asyncio.CancelledError, KeyboardInterrupt):
        return EXIT_FAILED


def _check_memory_sharing(agents: Sequence[AgentConfig]) -> None:
    """An in-memory bus or broker lives in one process: agents that share one across processes
    would never meet (RPC answers never come, nothing is delivered), so refuse before starting."""
    users: dict[str, list[str]] = {}
    for agent in agents:
        for backend in (agent.bus, agent.broker):
            found = registered_backend(backend.factory) if backend is not None else None
            if backend is not None and found is not None and found.one_process:
                users.setdefault(backend.label, []).append(agent.process_name)
    for label, names in users.items():
        if len(names) > 1:
            raise ConfigError(f'{label}: an in-memory backend lives in one process, but agents '
                              f'{", ".join(map(repr, names))} would each run in their own: run the group '
                              'with --single-process')


# one event loop running agents: an agent process, or the whole group with --single-process

@dataclass
class _Running:
    config: AgentConfig
    agent: MicroAgent
    context: contextvars.Context
    task: asyncio.Task[None]


def _announce(config: AgentConfig, agent: MicroAgent) -> None:
    agent.log.info('Started %s as %r: %d receivers, %d consumers, %d periodic, %d cron tasks',
                   type(agent).__qualname__, config.process_name, len(agent.receivers), len(agent.consumers),
                   len(agent.periodic_tasks), len(agent.cron_tasks))


async def run_agents(configs: Sequence[AgentConfig], stopping: asyncio.Event, grace: float,
                     ended: int = EXIT_FAILED, local: LocalAgents | None = None) -> int:
    """Build and start the agents, run them until ``stopping`` is set or one of them fails or ends
    (its servers returned), then stop them all gracefully. Returns the exit code: ``ended`` when an
    agent ended by itself (an agent process exits 0 then: its supervisor stops the group). Each
    agent built is added to ``local``, which answers for their readiness."""
    loop = asyncio.get_running_loop()
    running: list[_Running] = []
    code = EXIT_OK
    try:
        for config in configs:
            context = contextvars.copy_context()
            context.run(current_agent.set, config.process_name)
            try:
                agent = context.run(config.build)
            except ConfigError as exc:  # a DSN only its backend refuses, ...: one line, not a traceback
                log.error('Agent %s could not be created: %s', config.name, exc)
                return EXIT_CONFIG
            except Exception:
                log.exception('Agent %s could not be created', config.process_name)
                return EXIT_FAILED
            if local is not None:
                local.add(config.process_name, agent)
            agent.hooks.setdefault('post_start', []).append(functools.partial(_announce, config, agent))
            task = loop.create_task(_start(agent, config), name=f'agent:{config.process_name}', context=context)
            running.append(_Running(config, agent, context, task))
        watching: dict[asyncio.Future[Any], _Running] = {item.task: item for item in running}
        stop_wait: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
        while not stopping.is_set():
            done, _ = await asyncio.wait([*watching, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            for finished in done - {stop_wait}:
                item = watching.pop(finished)
                if not finished.cancelled() and isinstance(finished.exception(), ConnectionFailed):
                    log.error('Agent %s: %s; stopping the group', item.config.process_name, finished.exception())
                    code = EXIT_UNREACHABLE
                    stopping.set()
                elif finished.cancelled() or finished.exception() is not None:
                    log.error('Agent %s failed: stopping the group', item.config.process_name,
                              exc_info=None if finished.cancelled() else finished.exception())
                    code = EXIT_FAILED
                    stopping.set()
                elif item.config.has_servers:
                    log.warning('Agent %s ended (its servers returned): stopping', item.config.process_name)
                    code = ended
                    stopping.set()
        stop_wait.cancel()
    finally:
        await asyncio.gather(*(loop.create_task(_stop(item, grace), context=item.context) for item in running))
    return code


async def _start(agent: MicroAgent, config: AgentConfig) -> None:
    """Reach the bus's and broker's servers within their bound (``connect_timeout``; RabbitMQ's
    ``reconnect_timeout``), even an agent's that would connect only on its first send; then start."""
    bus, broker = getattr(agent, 'bus', None), getattr(agent, 'broker', None)
    for resource in (bus, broker if broker is not bus else None):
        bound = getattr(resource, 'connect_timeout', getattr(resource, 'reconnect_timeout', None))
        if resource is not None and isinstance(bound, int | float):
            await reach(repr(resource), resource.ping, bound)
    await agent.start(**config.events)


async def _stop(item: _Running, grace: float) -> None:
    agent, name = item.agent, item.config.process_name
    await stop_within(agent, name, grace, log)
    item.task.cancel()
    await asyncio.gather(item.task, return_exceptions=True)
    await close_engines((getattr(agent, 'bus', None), getattr(agent, 'broker', None)), f'Agent {name}', log)
    agent.log.info('Stopped')


def _stop_on_signals(stopping: asyncio.Event, stop_after: float | None, again: str,
                     on_again: Callable[[], object]) -> None:
    """SIGINT/SIGTERM (or ``stop_after`` seconds) set ``stopping``; a second signal calls ``on_again``.

    A signal within ``SIGNAL_ECHO`` seconds of the first is the same request: a terminal's Ctrl-C,
    ``kill -INT -PGID`` and GNU ``timeout`` (which signals marun, then its whole process group)
    deliver one stop to marun once or twice in the same instant, never meaning "kill them"."""
    loop = asyncio.get_running_loop()
    first: list[float] = []

    def on_signal(sig: signal.Signals) -> None:
        if not first:
            first.append(loop.time())
            if not stopping.is_set():
                log.info('Received %s: stopping the group', sig.name)
                stopping.set()
            loop.call_later(SIGNAL_ECHO, log.info, 'Still stopping: a second SIGINT or SIGTERM now means %s', again)
        elif loop.time() - first[0] < SIGNAL_ECHO:
            log.debug('Received %s again within %gs of the first: the same stop', sig.name, SIGNAL_ECHO)
        else:
            log.warning('Received %s again: %s', sig.name, again)
            on_again()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    if stop_after is not None:
        loop.call_later(stop_after, _time_is_up, stopping, stop_after)


async def _listen(http: str, endpoints: Endpoints) -> HttpServer:
    try:
        return await start_http(http, endpoints)
    except OSError as exc:
        raise ConfigError(f'--http {http}: cannot listen there: {exc}') from None


async def _single_process(modules: Sequence[str], configs: Sequence[AgentConfig], grace: float,
                          stop_after: float | None, http: str | None = None) -> int:
    stopping = asyncio.Event()
    main_task = asyncio.current_task()
    assert main_task is not None
    local = LocalAgents(config.process_name for config in configs)
    server = await _listen(http, fleet_endpoints(modules, local.readiness)) if http else None
    try:
        _stop_on_signals(stopping, stop_after, 'stopping now', main_task.cancel)
        log.info('Running %d agents in one process: %s', len(configs),
                 ', '.join(c.process_name for c in configs))
        return await run_agents(configs, stopping, grace, local=local)
    finally:
        if server is not None:
            await server.close()


def _time_is_up(stopping: asyncio.Event, seconds: float) -> None:
    if not stopping.is_set():
        log.info('Ran for %gs: stopping the group', seconds)
        stopping.set()


# an agent process, started by the supervisor

def _on_early_term(signum: int, frame: Any) -> None:
    global _early_stop
    _early_stop = True


def _agent_process(name: str, modules: Sequence[str], grace: float, watch_fd: int | None,
                   ready_fd: int | None = None, replicas: Mapping[str, int] | None = None) -> int:
    # Ctrl-C reaches every process of the terminal's group: the supervisor alone decides, then
    # stops its agents with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_early_term)
    config = next((copy for agent in with_replicas(load_group(modules), replicas or {}) for copy in agent.copies()
                   if copy.process_name == name), None)
    if config is None:
        raise ConfigError(f'no agent named {name!r} in {", ".join(modules)}')
    run_setups([config])
    return asyncio.run(_run_agent_process(config, grace, watch_fd, ready_fd))


async def _run_agent_process(config: AgentConfig, grace: float, watch_fd: int | None,
                             ready_fd: int | None = None) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def request_stop(why: str) -> None:
        if not stopping.is_set():
            log.info('Stopping: %s', why)
            stopping.set()

    loop.add_signal_handler(signal.SIGTERM, request_stop, 'received SIGTERM')
    if _early_stop:
        request_stop('received SIGTERM')
    if watch_fd is not None:
        os.set_blocking(watch_fd, False)

        def check_supervisor() -> None:
            try:
                if os.read(watch_fd, 64):
                    return
            except BlockingIOError:
                return
            except OSError:
                pass
            loop.remove_reader(watch_fd)
            request_stop('the supervisor is gone')

        loop.add_reader(watch_fd, check_supervisor)
    local = LocalAgents([config.process_name])
    answering = loop.create_task(answer_questions(ready_fd, local)) if ready_fd is not None else None
    try:
        return await run_agents([config], stopping, grace, ended=EXIT_OK, local=local)
    finally:
        if answering is not None:
            answering.cancel()
            await asyncio.gather(answering, return_exceptions=True)


# the supervisor

def _describe(returncode: int) -> str:
    if returncode < 0:
        with suppress(ValueError):
            return f'signal {signal.Signals(-returncode).name}'
    return f'code {returncode}'


async def _supervise(modules: Sequence[str], configs: Sequence[AgentConfig], grace: float,
                     stop_after: float | None, child_args: list[str], http: str | None = None) -> int:
    async with contextlib.AsyncExitStack() as stack:
        probes: dict[str, AgentProcess] = {}
        if http is not None:  # one port for the group: see microagent.ops.probes
            probes = {config.process_name: AgentProcess(config.process_name) for config in configs}
            for probe in probes.values():
                stack.callback(probe.close)
            endpoints = fleet_endpoints(modules, lambda: group_readiness(probes.values()),
                                        metrics=lambda: group_metrics(probes.values()))
            stack.push_async_callback((await _listen(http, endpoints)).close)
        code = await _run_processes(modules, configs, grace, stop_after, child_args, probes)
    return code


async def _run_processes(modules: Sequence[str], configs: Sequence[AgentConfig], grace: float,
                         stop_after: float | None, child_args: list[str], probes: dict[str, AgentProcess]) -> int:
    stopping, force = asyncio.Event(), asyncio.Event()
    _stop_on_signals(stopping, stop_after, 'killing the agents', force.set)
    # Agents hold the read end of this pipe; it reaches EOF when marun is gone, however it died.
    read_fd, write_fd = os.pipe()
    procs: dict[str, asyncio.subprocess.Process] = {}
    try:
        try:
            for config in configs:
                name = config.process_name
                probe = probes.get(name)
                extra = ['--ready-fd', str(probe.theirs.fileno())] if probe else []
                procs[name] = await asyncio.create_subprocess_exec(
                    sys.executable, '-m', 'microagent.cli.marun', *modules, *child_args,
                    '--agent-process', name, '--watch-fd', str(read_fd), *extra,
                    pass_fds=(read_fd, *([probe.theirs.fileno()] if probe else [])))
                if probe is not None:
                    probe.started()
                log.info('Started agent %s (pid %d)', name, procs[name].pid)
        finally:
            os.close(read_fd)
        return await _watch(procs, stopping, force, grace)
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                with suppress(ProcessLookupError):
                    proc.kill()
        os.close(write_fd)


async def _watch(procs: dict[str, asyncio.subprocess.Process], stopping: asyncio.Event,
                 force: asyncio.Event, grace: float) -> int:
    loop = asyncio.get_running_loop()
    exits: dict[asyncio.Future[Any], str] = {asyncio.ensure_future(proc.wait()): name
                                             for name, proc in procs.items()}
    stop_wait: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
    done, _ = await asyncio.wait([*exits, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    code = EXIT_OK
    reported = set()
    for task in done - {stop_wait}:
        name = exits[task]
        log.error('Agent %s exited with %s: stopping the group', name, _describe(task.result()))
        reported.add(name)
        if code not in (EXIT_CONFIG, EXIT_UNREACHABLE):  # an agent's 2 or 3 is the group's
            code = task.result() if task.result() in (EXIT_CONFIG, EXIT_UNREACHABLE) else EXIT_FAILED
    stop_wait.cancel()
    for proc in procs.values():
        if proc.returncode is None:
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = loop.time() + grace + KILL_MARGIN
    force_wait = asyncio.ensure_future(force.wait())
    pending = [task for task in exits if not task.done()]
    while pending and not force.is_set() and (left := deadline - loop.time()) > 0:
        await asyncio.wait([*pending, force_wait], timeout=left, return_when=asyncio.FIRST_COMPLETED)
        pending = [task for task in pending if not task.done()]
    force_wait.cancel()
    for name, proc in procs.items():
        if proc.returncode is None:
            log.error('Agent %s did not stop in time: killing it', name)
            with suppress(ProcessLookupError):
                proc.kill()
    await asyncio.gather(*exits)
    for task, name in exits.items():
        returncode = task.result()
        if name not in reported and returncode not in (0, -signal.SIGTERM):  # -SIGTERM: stopped before it ran
            log.error('Agent %s exited with %s', name, _describe(returncode))
            code = code if code in (EXIT_CONFIG, EXIT_UNREACHABLE) else EXIT_FAILED  # the first one's says why
    log.info('Group stopped')
    return code


if __name__ == '__main__':
    sys.exit(main())
