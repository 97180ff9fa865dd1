"""``microagent docs SETTINGS -o site/``: one self-contained HTML page of a fleet (inline CSS, JS
and SVG; no CDN, works offline): the topology as a diagram and every payload schema.

The diagram is laid out in three columns, so it stays readable at 30 agents: the agents that send
on the left, the signals, queues and exchanges in the middle, the agents that receive on the right
(an agent that does both appears on both sides). It scales to the width of the window; on a phone
the page shows the same channels as a list instead. The detail pane shows the first channel's schema
and example at once, and any other channel's when it is clicked; properties keep the model's order.
The title is the settings module's ``TITLE`` when it has one.
"""
from __future__ import annotations

import html
import json
from typing import Any

from microagent.contract.fleet import Fleet
from microagent.contract.samples import SampleError, sample_json
from microagent.queue import Queue
from microagent.signal import Signal

ROW, WIDTH, BOX_W, BOX_H = 34, 960, 230, 24
COLUMNS = (20, 365, 710)  # x of senders, channels, receivers

STYLE = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7fb}
header{background:#1d2330;color:#fff;padding:12px 16px}h1{font-size:20px;margin:0}
header .sources{color:#b8c0d8;font-size:12px}
main{display:grid;grid-template-columns:minmax(0,1fr) minmax(280px,400px);gap:16px;padding:16px}
#diagram,#list,#detail{background:#fff;border-radius:8px;padding:8px;min-width:0}
#diagram{align-self:start}#diagram svg{display:block;width:100%;height:auto}
#detail{align-self:start;position:sticky;top:8px;padding:12px 16px}#detail h2{font-size:17px;margin:0 0 4px}
pre{background:#f0f2f7;padding:8px;border-radius:6px;overflow:auto;font-size:12px;white-space:pre-wrap;
  overflow-wrap:anywhere;max-height:60vh}
.agent rect{fill:#e6ecff;stroke:#4a62c9}.channel rect{stroke:#888;cursor:pointer}
.signal rect,li.signal{fill:#fff4d6;background:#fff4d6}.queue rect,li.queue{fill:#dff5e3;background:#dff5e3}
.exchange rect,li.exchange{fill:#f3e3f7;background:#f3e3f7}.rpc rect,li.rpc{fill:#ffe0d6;background:#ffe0d6}
.channel:hover rect,.channel.selected rect{stroke:#d33;stroke-width:2}li.channel.selected{outline:2px solid #d33}
text{font-size:12px;dominant-baseline:middle}path{fill:none;stroke:#9aa3b8;stroke-width:1.2}
path.receive{stroke:#4a62c9}
.legend span{color:#1d2330;display:inline-block;padding:0 6px;margin-right:6px;border-radius:3px}
#list{display:none;margin:0;padding:8px;list-style:none}
#list li{padding:6px 8px;margin:4px 0;border-radius:6px;cursor:pointer;overflow-wrap:anywhere}
#list li small{display:block;color:#4a5268}
@media (max-width:900px){main{grid-template-columns:minmax(0,1fr)}#detail{position:static}}
@media (max-width:640px){main{padding:8px;gap:8px}#diagram{display:none}#list{display:block}}
"""

SCRIPT = """
const schemas = JSON.parse(document.getElementById('schemas').textContent);
function show(id) {
  const item = schemas[id];
  document.querySelectorAll('.channel').forEach(n => n.classList.toggle('selected', n.dataset.id === id));
  const detail = document.getElementById('detail');
  detail.querySelector('h2').textContent = item.title;
  detail.querySelector('.who').textContent = item.who;
  detail.querySelector('.schema').textContent = JSON.stringify(item.schema, null, 2);
  detail.querySelector('.example').textContent =
    item.example === null ? '(no example for this schema)' : JSON.stringify(item.example, null, 2);
}
document.querySelectorAll('.channel').forEach(n => n.addEventListener('click', () => show(n.dataset.id)));
const channels = [...document.querySelectorAll('.channel')];
const first = channels.find(n => schemas[n.dataset.id].schema.payload) || channels[0];  // at once, no click
if (first) show(first.dataset.id);
"""


def _example(schema: dict[str, Any]) -> Any:
    """The example message of a payload schema; None (the page says so) when none can be built."""
    try:
        return sample_json(schema)
    except SampleError:
        return None


def _channels(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """Channel id -> title, kind, senders, receivers, schema: the model of the diagram."""
    found: dict[str, dict[str, Any]] = {}

    def channel(item: Any) -> dict[str, Any]:
        kind = 'signal' if isinstance(item, Signal) else 'queue' if isinstance(item, Queue) else 'exchange'
        entry = found.setdefault(f'{kind}:{item.name}', {'title': f'{kind} {item.name}', 'kind': kind,
                                                         'senders': set(), 'receivers': set(), 'schema': {}})
        if isinstance(item, Queue) and item.exchange:
            entry['title'] = f'queue {item.name} ← {item.exchange}'  # routed from the exchange
        if isinstance(item, Signal | Queue):
            entry['schema'] = {'payload': item.codec.schema}
            if isinstance(item, Signal) and item.answer_codec is not None:
                entry['kind'], entry['schema']['answer'] = 'rpc', item.answer_codec.schema
        return entry

    for item in fleet.declarations:
        channel(item)
    for agent in fleet.agents:
        for item in agent.cls.sends:
            channel(item)['senders'].add(agent.name)
        for signal in agent.receives():
            channel(signal)['receivers'].add(agent.name)
        for spec in agent.consumes():
            channel(spec.queue)['receivers'].add(agent.name)
    return dict(sorted(found.items()))


def _box(x: int, y: int, label: str, css: str, data: str = '') -> str:
    return (f'<g class="{css}"{data}><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="5"/>'
            f'<text x="{x + 8}" y="{y + BOX_H // 2}">{html.escape(label)}</text></g>')


def _edge(x1: int, y1: int, x2: int, y2: int, css: str) -> str:
    mid = (x1 + x2) // 2
    return f'<path class="{css}" d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"/>'


KINDS = (('signal', 'signals'), ('rpc', 'RPC signals'), ('queue', 'queues'), ('exchange', 'exchanges'))


def _ordered(fleet: Fleet, channels: dict[str, dict[str, Any]]) -> tuple[list[str], list[str], dict[str, Any]]:
    """Senders (then idle agents), receivers, and the channels beside their senders: fewer crossings."""
    senders = sorted({a for c in channels.values() for a in c['senders']})
    receivers = sorted({a for c in channels.values() for a in c['receivers']})
    senders += [a.name for a in fleet.agents if a.name not in senders and a.name not in receivers]
    order = {name: i for i, name in enumerate(senders)}
    channels = dict(sorted(channels.items(), key=lambda kv: (
        min((order[a] for a in kv[1]['senders']), default=len(order)), kv[0])))
    return senders, receivers, channels


def _svg(senders: list[str], receivers: list[str], channels: dict[str, dict[str, Any]]) -> str:
    kinds = {entry['kind'] for entry in channels.values()}
    middle = ', '.join(plural for kind, plural in KINDS if kind in kinds) or 'channels'
    rows = max(len(senders), len(receivers), len(channels), 1)
    height = rows * ROW + 40
    y = {name: 30 + i * ROW for i, name in enumerate(senders)}
    ry = {name: 30 + i * ROW for i, name in enumerate(receivers)}
    parts = [f'<text x="{x}" y="12" font-weight="bold">{title}</text>'
             for x, title in zip(COLUMNS, ('sends', html.escape(middle), 'receives'), strict=True)]
    for i, (cid, entry) in enumerate(channels.items()):
        cy = 30 + i * ROW
        for name in sorted(entry['senders']):
            parts.append(_edge(COLUMNS[0] + BOX_W, y[name] + BOX_H // 2, COLUMNS[1], cy + BOX_H // 2, 'send'))
        for name in sorted(entry['receivers']):
            parts.append(_edge(COLUMNS[1] + BOX_W, cy + BOX_H // 2, COLUMNS[2], ry[name] + BOX_H // 2, 'receive'))
        parts.append(_box(COLUMNS[1], cy, entry['title'], f'channel {entry["kind"]}',
                          f' data-id="{html.escape(cid)}"'))
    parts += [_box(COLUMNS[0], y[name], name, 'agent sender') for name in senders]
    parts += [_box(COLUMNS[2], ry[name], name, 'agent receiver') for name in receivers]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}">{"".join(parts)}</svg>')


def _list(channels: dict[str, dict[str, Any]]) -> str:
    """The channels as a list, for a window too narrow for the diagram."""
    items = [f'<li class="channel {entry["kind"]}" data-id="{html.escape(cid)}"><b>{html.escape(entry["title"])}</b>'
             f'<small>{html.escape(", ".join(sorted(entry["senders"])) or "nobody")} → '
             f'{html.escape(", ".join(sorted(entry["receivers"])) or "nobody")}</small></li>'
             for cid, entry in channels.items()]
    return f'<ol id="list">{"".join(items)}</ol>'


def render_docs(fleet: Fleet, title: str | None = None) -> str:
    """The page as one HTML string (``marun --http`` serves it at ``/docs``); its title is ``title``,
    else the fleet's (a settings ``TITLE``), else the number of agents."""
    senders, receivers, channels = _ordered(fleet, _channels(fleet))
    data = {cid: {'title': entry['title'], 'schema': entry['schema'],
                  'example': _example(entry['schema'].get('payload', {})),
                  'who': f'sent by {", ".join(sorted(entry["senders"])) or "nobody"}; received by '
                         f'{", ".join(sorted(entry["receivers"])) or "nobody"}'}
            for cid, entry in channels.items()}
    payload = json.dumps(data).replace('</', '<\\/')  # not sorted: properties in the model's order
    name = html.escape(title or fleet.heading or f'{len(fleet.agents)} agents and their messages')
    kinds = {entry['kind'] for entry in channels.values()}
    legend = ''.join(f'<span class="{kind}" style="background:{color}">{kind}</span>' for kind, color in
                     (('signal', '#fff4d6'), ('rpc', '#ffe0d6'), ('queue', '#dff5e3'), ('exchange', '#f3e3f7'))
                     if kind in kinds)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{name}</title>'
            f'<style>{STYLE}</style></head><body><header><h1>{name}</h1>'
            f'<div class="legend">{len(fleet.agents)} agents, {len(channels)} channels · {legend}</div>'
            f'<div class="sources">{html.escape(fleet.title)}</div></header>'
            f'<main><div id="diagram">{_svg(senders, receivers, channels)}</div>{_list(channels)}'
            '<section id="detail"><h2>Click a signal, queue or exchange</h2><p class="who"></p>'
            '<h3>Schema</h3><pre class="schema"></pre><h3>Example message</h3><pre class="example"></pre>'
            f'</section></main><script type="application/json" id="schemas">{payload}</script>'
            f'<script>{SCRIPT}</script></body></html>\n')
