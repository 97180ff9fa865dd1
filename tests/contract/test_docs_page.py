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
    assert 'sent by users; received by mailer' in browser.find_element(By.CSS_SELECTOR, '#detail .who').text
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
    assert len(senders) == 30 and len(browser.find_elements(By.CSS_SELECTOR, '.channel')) == 30
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
