"""Reference agents for the schema and AsyncAPI tests: every kind of handler and payload the export
must describe (typed msgspec/pydantic/dataclass/TypedDict, nested and recursive models, RPC, 1.x
declarations, ``dto_class``, exchanges), importable as ``tests.schema_agents:ReferenceAgent``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import msgspec
import pydantic

from microagent import MicroAgent, Queue, Signal, consumer, cron, periodic, receiver
from schemas import CountQuery, Mail, Push, UserCreated, comments_count, mailer, push_android, push_ios, user_created


class Address(msgspec.Struct, frozen=True):
    city: str
    zip_code: str = ''


class Order(msgspec.Struct, frozen=True, rename='camel'):
    """An order with a nested model and a tuple (``prefixItems`` in JSON Schema 2020-12)."""

    order_id: int
    ship_to: Address
    lines: list[tuple[str, int]]


class Category(pydantic.BaseModel):
    """A recursive pydantic model: its schema refers to itself."""

    name: str
    children: list[Category] = []


@dataclass
class Invoice:
    invoice_id: int
    total: float = 0.0


class Note(TypedDict):
    text: str
    author: NotRequired[str]


class LegacyDTO(msgspec.Struct):
    user_id: int


order_placed = Signal('schema_ref_order_placed', Order)
price_asked = Signal('schema_ref_price_asked', Order, returns=Invoice)
category_added = Signal('schema_ref_category_added', Category)
legacy_started = Signal(name='schema_ref_started', providing_args=['user_id', 'name'])
typed_legacy = Signal(name='schema_ref_typed', providing_args={'user_id': 'integer', 'note': ['string', 'null']})
invoices = Queue('schema_ref_invoices', Invoice)
notes = Queue('schema_ref_notes', Note, exchange='schema_ref_events')
legacy_jobs = Queue(name='schema_ref_jobs')


class ReferenceAgent(MicroAgent):
    @receiver(user_created)
    async def welcome(self, user: UserCreated) -> None: ...

    @receiver(order_placed, category_added, timeout=5)
    async def catalogue(self, item: Order | Category, *, sender: str) -> None: ...

    @receiver(price_asked)
    async def price(self, order: Order) -> Invoice:
        return Invoice(invoice_id=order.order_id)

    @receiver(comments_count)
    async def count(self, query: CountQuery) -> int:
        return query.user_id

    @receiver(legacy_started)
    async def started(self, signal: Signal, sender: str, **kwargs: Any) -> None: ...

    @receiver(typed_legacy)
    async def typed(self, **kwargs: Any) -> None: ...

    @consumer(mailer, timeout=30, concurrency=4, max_retries=5)
    async def send_mail(self, mail: Mail) -> None: ...

    @consumer(invoices)
    async def bill(self, invoice: Invoice) -> None: ...

    @consumer(notes, autoack=True)
    async def note(self, note: Note) -> None: ...

    @consumer(legacy_jobs, dto_class=LegacyDTO, dto_name='obj')
    async def job(self, obj: LegacyDTO, **kwargs: Any) -> None: ...

    @periodic(period=5, timeout=2, start_after=1)
    async def tick(self) -> None: ...

    @cron('0 * * * *', timeout=10)
    async def hourly(self) -> None: ...


class PushAgent(MicroAgent):
    """A second agent sharing a model (``Push``) and an RPC signal with the first."""

    @consumer(push_android)
    async def android(self, push: Push) -> None: ...

    @consumer(push_ios)
    async def ios(self, push: Push) -> None: ...

    @receiver(comments_count)
    async def count(self, query: CountQuery) -> int:
        return 0
