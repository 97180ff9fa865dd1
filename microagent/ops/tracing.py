"""OpenTelemetry traces as a middleware (extra ``otel``: opentelemetry-api; an SDK to export them).

``TracingMiddleware`` turns every send into a PRODUCER span whose context travels in the message's
``traceparent``/``tracestate``, and every handling into a CONSUMER span parented on it, after the
OTel messaging semantic conventions; a periodic or cron run is an INTERNAL root span, so what it
sends starts a trace. One trace then spans processes and backends::

    tracing = TracingMiddleware()             # the global tracer provider, the W3C propagator
    agent = MailAgent(bus=bus, broker=broker, middlewares=[tracing])

Without an SDK (the API's no-op provider) it costs next to nothing: ``enabled`` says that nothing
records, the engine leaves it out of the call, and still carries the trace in ``traceparent`` as always.
Set the global provider before the first message, or give one: ``TracingMiddleware(provider)``.
"""
from __future__ import annotations

import functools
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Link, NoOpTracer, NoOpTracerProvider, ProxyTracerProvider, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from microagent.backends import backend_named
from microagent.message import CORRELATION_ID, MESSAGE_ID, REQUEST_ID, TRACEPARENT, TRACESTATE, Message, current_message
from microagent.middleware import Handling, Middleware, Next, Outcome, Sending

__all__ = ['TracingMiddleware']

#: ``messaging.operation.name`` of each kind of send (``messaging.operation.type`` is ``send``)
OPERATION_NAMES = {'signal': 'publish', 'call': 'call', 'answer': 'reply', 'queue': 'send', 'exchange': 'publish'}
_UNSET = object()
_W3C = TraceContextTextMapPropagator()  # what the engine's own traceparent header holds

#: the span of the receiver that last handled an RPC request in this task, by request id: the
#: engine sends the answer after the receiver's handling ended, in the same task
_answering: ContextVar[tuple[str, otel_context.Context] | None] = ContextVar('microagent_answering', default=None)


class TracingMiddleware(Middleware):
    """Producer and consumer spans of every message; no-op (and nearly free) until a provider records."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None,
                 propagator: TextMapPropagator | None = None) -> None:
        self.propagator = propagator or TraceContextTextMapPropagator()
        self._provider = tracer_provider
        self._tracer: trace.Tracer | None = None
        self._off = isinstance(tracer_provider, NoOpTracerProvider)  # for good: nothing will ever record
        if tracer_provider is None:
            trace.get_tracer_provider()  # loads one named by OTEL_PYTHON_TRACER_PROVIDER, if any

    @property
    def enabled(self) -> bool:  # type: ignore[override]  # read-only here: it follows the provider
        """False while nothing records: the engine then leaves this middleware out of the call."""
        return self._tracer is not None or self._resolve() is not None

    def _resolve(self) -> trace.Tracer | None:
        """The tracer, once there is a provider that may record; None (cheaply) until then. The
        global provider is set once per process, so the first real one found is kept."""
        if self._off:
            return None
        provider = self._provider
        if provider is None:
            if getattr(trace, '_TRACER_PROVIDER', _UNSET) is None:  # the API's own test, without its cost
                return None
            provider = trace.get_tracer_provider()
            if isinstance(provider, ProxyTracerProvider):
                return None
        from microagent import __version__
        tracer = provider.get_tracer('microagent', __version__)
        if isinstance(provider, NoOpTracerProvider) or isinstance(tracer, NoOpTracer):
            self._off = True
            return None
        self._tracer = tracer
        return tracer

    # handling

    async def handle(self, handling: Handling, call_next: Next) -> Any:
        tracer = self._tracer or self._resolve()
        if tracer is None:
            return await call_next()
        return await self._handle(tracer, handling, call_next)

    async def _handle(self, tracer: trace.Tracer, handling: Handling, call_next: Next) -> Any:
        message = handling.message
        if message is None:  # a periodic or cron run: the root of what it sends
            span = tracer.start_span(f'{handling.kind} {handling.name}', otel_context.Context(),
                                     SpanKind.INTERNAL, {'microagent.agent': handling.agent,
                                                         'microagent.handler': handling.handler,
                                                         'microagent.kind': handling.kind})
            span_context = trace.set_span_in_context(span)
        else:
            parent = self._parent_of(message)  # with what else the propagator carries (baggage)
            span = tracer.start_span(f'process {handling.name}', parent, SpanKind.CONSUMER,
                                     self._consumer_attributes(handling, message))
            span_context = trace.set_span_in_context(span, parent)
        if message is not None and message.request_id and message.reply_to:
            _answering.set((message.request_id, span_context))  # kept past this handling, for the answer
        token = otel_context.attach(span_context)
        try:
            result = await call_next()
        except Exception as exc:
            if span.is_recording():
                _failed(span, handling, exc)
            raise
        else:
            span.set_attribute('microagent.outcome', Outcome.OK.value)
            return result
        finally:
            otel_context.detach(token)
            span.end()

    def _parent_of(self, message: Message) -> otel_context.Context:
        """The context the message carries (another propagator's headers are user headers); an empty
        one (a new trace) without a valid one."""
        if message.traceparent is None and not message.headers:
            return otel_context.Context()
        carrier = dict(message.headers) if message.headers else {}
        if message.traceparent is not None:
            carrier[TRACEPARENT] = message.traceparent
            if message.tracestate:
                carrier[TRACESTATE] = message.tracestate
        return self.propagator.extract(carrier, otel_context.Context())

    @staticmethod
    def _consumer_attributes(handling: Handling, message: Message) -> dict[str, str | int]:
        return {
            'messaging.system': _system(handling.backend),
            'messaging.destination.name': handling.name,
            'messaging.operation.type': 'process',
            'messaging.operation.name': 'process',
            'messaging.message.id': message.message_id,
            'messaging.message.conversation_id': message.correlation_id,
            'microagent.message.attempt': message.attempt,
            'microagent.agent': handling.agent,
            'microagent.handler': handling.handler,
            'microagent.kind': handling.kind,
        }

    # sending

    async def send(self, sending: Sending, call_next: Next) -> Any:
        tracer = self._tracer or self._resolve()
        if tracer is None:
            return await call_next()
        return await self._send(tracer, sending, call_next)

    async def _send(self, tracer: trace.Tracer, sending: Sending, call_next: Next) -> Any:
        parent, links = self._send_parent(sending)
        span = tracer.start_span(f'{OPERATION_NAMES[sending.kind]} {sending.name}', parent, SpanKind.PRODUCER,
                                 self._producer_attributes(sending), links)
        injected = trace.set_span_in_context(span)
        for headers in sending.headers:
            headers.pop(TRACESTATE, None)  # the engine's, from the handled message: the span's own replaces it
            self.propagator.inject(headers, injected)
        try:
            return await call_next()
        except Exception as exc:
            if span.is_recording():
                _error(span, exc)
            raise
        finally:
            span.end()

    @staticmethod
    def _send_parent(sending: Sending) -> tuple[otel_context.Context | None, list[Link] | None]:
        """The current span (None: the current context); an answer's is the span of the receiver
        that answers, linked to the call; without a current span, the handled message's trace."""
        if sending.kind == 'answer':
            answering = _answering.get()
            request_id = sending.headers[0].get(REQUEST_ID) if sending.headers else None
            if answering is not None and answering[0] == request_id:
                request = current_message()
                links = None
                if request is not None and request.traceparent:
                    called = trace.get_current_span(_W3C.extract(
                        {TRACEPARENT: request.traceparent})).get_span_context()
                    links = [Link(called)] if called.is_valid else None
                return answering[1], links
        if trace.get_current_span().get_span_context().is_valid:
            return None, None
        handled = current_message()
        if handled is not None and handled.traceparent:
            return _W3C.extract({TRACEPARENT: handled.traceparent, TRACESTATE: handled.tracestate or ''}), None
        return otel_context.Context(), None

    @staticmethod
    def _producer_attributes(sending: Sending) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {
            'messaging.system': _system(sending.backend),
            'messaging.destination.name': sending.name,
            'messaging.operation.type': 'send',
            'messaging.operation.name': OPERATION_NAMES[sending.kind],
            'microagent.kind': sending.kind,
        }
        if len(sending.headers) == 1:
            headers = sending.headers[0]
            message_id = headers.get(MESSAGE_ID, '')
            attributes['messaging.message.id'] = message_id
            attributes['messaging.message.conversation_id'] = headers.get(CORRELATION_ID) or message_id
        else:
            attributes['messaging.batch.message_count'] = len(sending.headers)
        if sending.sender:
            attributes['microagent.sender'] = sending.sender
        return attributes


def _failed(span: trace.Span, handling: Handling, exc: Exception) -> None:
    """What became of the message (``retried``, ``dead_lettered``, ``timed_out``, ``failed``), the error."""
    span.set_attribute('microagent.outcome', 'timed_out' if handling.timed_out else handling.outcome.value)
    if handling.retry_delay is not None:
        span.set_attribute('microagent.retry_delay', handling.retry_delay)
    _error(span, exc)


def _error(span: trace.Span, exc: Exception) -> None:
    span.set_attribute('error.type', _error_type(exc))
    span.record_exception(exc)
    span.set_status(StatusCode.ERROR, f'{type(exc).__name__}: {exc}')


def _error_type(exc: BaseException) -> str:
    """``error.type``: the exception's fully qualified class name (a builtin's bare name)."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == 'builtins' else f'{cls.__module__}.{cls.__qualname__}'


@functools.lru_cache(maxsize=64)
def _system(backend: str) -> str:
    """``messaging.system`` of a backend: the registry's (the conventions' names), else its own name."""
    found = backend_named(backend)
    return found.system if found is not None else backend
