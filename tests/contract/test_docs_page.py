"""``microagent docs``: the page in a real headless Chromium (Debian ``chromium`` and
``chromium-driver``, driven by selenium at /usr/bin/chromedriver: no driver download). It loads
without console errors, shows every agent, and clicking a signal shows its schema; a 30-agent
fleet renders too. Screenshots go to ``tests/artifacts/`` (gitignored)."""
from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from microagent import MicroAgent, Queue, Signal, receiver
from microagent.cli.main import main
from microagent.cli.targets import load_fleet
from microagent.contract.docs_page import render_docs
from microagent.contract.fleet import Fleet, FleetAgent
from schemas import user_created

ARTIFACTS = Path(__file__).resolve().parents[1] / 'artifacts'
CHROMEDRIVER = '/usr/bin/chromedriver'


@pytest.fixture(scope='module')
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip('selenium.webdriver')
    if shutil.which('chromium') is None or not os.path.exists(CHROMEDRIVER):
        message = 'the Debian chromium and chromium-driver packages are needed'
        if os.environ.get('MICROAGENT_REQUIRE_SERVICES'):
            pytest.fail(message + ' and MICROAGENT_REQUIRE_SERVICES is set')
        pytest.skip(message)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--window-size=1400,1000'):
        options.add_argument(flag)
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser: Any, page: str, folder: Path) -> None:
    path = folder / 'index.html'
    path.write_text(page, encoding='utf-8')
    browser.get(path.as_uri())
    errors = [entry for entry in browser.get_log('browser') if entry['level'] == 'SEVERE']
    assert errors == []


def test_the_demo_page_shows_every_agent_and_a_clicked_schema(browser: Any, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from selenium.webdriver.common.by import By

    assert main(['docs', 'examples.settings_memory', '-o', str(tmp_path)]) == 0
    page = (tmp_path / 'index.html').read_text()
    assert 'http://' not in page.replace('http://www.w3.org/2000/svg', '') and 'https://' not in page.replace(
        'https://json-schema.org', '')  # nothing to fetch: works offline
    open_page(browser, page, tmp_path)
    shown = {node.text for node in browser.find_elements(By.CSS_SELECTOR, '.agent text')}
    assert {'users', 'comments', 'mailer', 'push'} <= shown
    browser.find_element(By.CSS_SELECTOR, '.channel[data-id="signal:user_created"]').click()
    assert browser.find_element(By.CSS_SELECTOR, '#detail h2').text == 'signal user_created'
    schema = json.loads(browser.find_element(By.CSS_SELECTOR, '#detail .schema').text)
    assert schema['payload']['title'] == 'UserCreated' and 'email' in schema['payload']['properties']
    assert 'sent by users; received by billing, mailer' in browser.find_element(By.CSS_SELECTOR, '#detail .who').text
    shown_example = json.loads(browser.find_element(By.CSS_SELECTOR, '#detail .example').text)
    assert user_created.codec.decode(json.dumps(shown_example)).user_id == shown_example['user_id']  # a valid message
    assert shown_example['email'] == 'user@example.com'
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / 'docs-demo.png'))
    assert [entry for entry in browser.get_log('browser') if entry['level'] == 'SEVERE'] == []


class Tick(msgspec.Struct):
    n: int


def big_fleet() -> Fleet:
    """30 agents in a ring of 30 signals: each sends one and receives the one before."""
    signals = [Signal(f'docs_ring_{i}', Tick) for i in range(30)]
    agents = []
    for i in range(30):
        async def handle(self: MicroAgent, tick: Tick) -> None:
            pass
        cls = type(f'Ring{i}', (MicroAgent,), {'sends': (signals[i],),
                                               'handle': receiver(signals[i - 1])(handle)})
        agents.append(FleetAgent(f'ring-{i:02d}', cls))
    return Fleet('ring', agents)


def test_a_30_agent_fleet_renders(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, render_docs(big_fleet()), tmp_path)
    senders = browser.find_elements(By.CSS_SELECTOR, '.agent.sender')
    assert len(senders) == 30 and len(browser.find_elements(By.CSS_SELECTOR, '#diagram .channel')) == 30
    boxes = [node.rect for node in senders]
    assert all(a['y'] + a['height'] <= b['y'] for a, b in itertools.pairwise(boxes))  # no overlap, in order
    browser.find_element(By.CSS_SELECTOR, '.channel[data-id="signal:docs_ring_7"]').click()
    assert 'sent by ring-07; received by ring-08' in browser.find_element(By.CSS_SELECTOR, '#detail .who').text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / 'docs-30-agents.png'))


def test_every_channel_of_the_demo_page_has_a_valid_example_message() -> None:
    page = render_docs(load_fleet(['examples.settings_memory']))
    data = json.loads(page.split('<script type="application/json" id="schemas">')[1].split('</script>')[0])
    channels = [cid for cid in data if not cid.startswith('exchange:')]
    assert len(channels) == 5  # the 2 signals and 3 queues the demo sends or receives
    for cid in channels:
        kind, name = cid.split(':')
        declaration = Signal.get(name) if kind == 'signal' else Queue.get(name)
        assert data[cid]['example'] is not None, cid
        declaration.codec.decode(json.dumps(data[cid]['example']))  # raises when invalid


def test_docs_names_a_bad_target(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(['docs', 'no_such_settings', '-o', str(tmp_path)]) == 2
    assert "'no_such_settings'" in capsys.readouterr().err
    assert load_fleet(['examples.settings_memory']).agents  # the loader is shared with schema and check


# the page at a laptop's and a phone's width

FITS = """
const width = window.innerWidth;
const columns = [...document.querySelectorAll(
    '#diagram, #list, #list li, #detail, #diagram .sender rect, #diagram .channel rect, #diagram .receiver rect')]
  .filter(node => node.getClientRects().length > 0);  // shown at this width
const outside = columns.map(node => [node.closest('[id], g')?.textContent.slice(0, 40), node.getBoundingClientRect()])
  .filter(([, box]) => box.left < 0 || box.right > width + 0.5).map(([name]) => name);
return {scroll: document.documentElement.scrollWidth, width: width, shown: columns.length, outside: outside};
"""


def at_width(browser: Any, width: int) -> None:
    browser.execute_cdp_cmd('Emulation.setDeviceMetricsOverride',
                            {'width': width, 'height': 900, 'deviceScaleFactor': 1, 'mobile': width < 600})


class Address(msgspec.Struct):
    zip_code: str  # declared out of alphabetical order: the page keeps this order
    city: str
    age: int


ADDRESS_MOVED = Signal('docs_address_moved', Address)
ADDRESS_QUEUE = Queue('docs_address_queue', Address)


class Mover(MicroAgent):
    sends = (ADDRESS_MOVED, ADDRESS_QUEUE)


class Watcher(MicroAgent):
    @receiver(ADDRESS_MOVED)
    async def moved(self, address: Address) -> None: ...


@pytest.mark.parametrize('width', [1280, 390])
@pytest.mark.parametrize('fleet', ['demo', 'ring'])
def test_the_page_reads_at_laptop_and_phone_widths(browser: Any, tmp_path: Path, width: int, fleet: str) -> None:
    from selenium.webdriver.common.by import By

    page = render_docs(load_fleet(['examples.settings_memory']) if fleet == 'demo' else big_fleet())
    at_width(browser, width)
    try:
        open_page(browser, page, tmp_path)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / f'docs-{fleet}-{width}.png'))
        fits = browser.execute_script(FITS)
        assert fits['width'] == width
        assert fits['scroll'] <= width, fits  # nothing scrolls sideways
        assert fits['outside'] == [] and fits['shown'] >= 3, fits  # every column inside the window
        # the detail pane shows a schema and an example before anything is clicked
        assert json.loads(browser.find_element(By.CSS_SELECTOR, '#detail .schema').text)['payload']['properties']
        assert json.loads(browser.find_element(By.CSS_SELECTOR, '#detail .example').text)
        # every channel is there to pick: boxes of the diagram, or the list on a phone
        picked = [node for node in browser.find_elements(By.CSS_SELECTOR, '.channel') if node.is_displayed()]
        assert len(picked) == (5 if fleet == 'demo' else 30) + (1 if fleet == 'demo' else 0)  # the demo's exchange
        picked[-1].click()
        assert browser.find_element(By.CSS_SELECTOR, '#detail h2').text == picked[-1].find_element(
            By.CSS_SELECTOR, 'b, text').text.split('\n')[0]
    finally:
        browser.execute_cdp_cmd('Emulation.clearDeviceMetricsOverride', {})


def test_the_panes_show_the_properties_in_the_model_order(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, render_docs(Fleet('tests.docs_settings', [FleetAgent('mover', Mover),
                                                                   FleetAgent('watcher', Watcher)])), tmp_path)
    shown = json.loads(browser.find_element(By.CSS_SELECTOR, '#detail .schema').text)  # not clicked
    assert list(shown['payload']['properties']) == ['zip_code', 'city', 'age']
    assert list(json.loads(browser.find_element(By.CSS_SELECTOR, '#detail .example').text)) == [
        'zip_code', 'city', 'age']
    legend = [node.text for node in browser.find_elements(By.CSS_SELECTOR, '.legend span')]
    assert legend == ['signal', 'queue']  # no exchange, no RPC in this fleet
    assert browser.title == '2 agents and their messages'  # no TITLE: a readable default, not a module name


def test_the_title_comes_from_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / 'docs_titled_settings.py').write_text(
        'from examples.settings_memory import AGENT, BROKER, BUS\n\nTITLE = "Acme shop"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    page = render_docs(load_fleet(['docs_titled_settings']))
    assert '<title>Acme shop</title>' in page and '<h1>Acme shop</h1>' in page
    assert 'docs_titled_settings' in page.split('<div class="sources">')[1].split('</div>')[0]  # where it is from
