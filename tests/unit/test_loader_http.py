"""Declarations over http(s) are bounded in size and in time, and errors name the URL without secrets."""
from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from microagent import configure, load_stuff
from microagent.errors import DeclarationError
from microagent.loader import MAX_SIZE

SECRET = 'S3cretToken'


class Handler(http.server.BaseHTTPRequestHandler):
    """/big: a valid document over the default limit, no Content-Length; /small: a tiny one;
    /trickle: one byte every 0.2 s; /huge: a Content-Length of 1 TB, then nothing."""

    stop: threading.Event
    body_requested: list[str]

    def do_GET(self) -> None:
        path = self.path.partition('?')[0]
        self.send_response(200)
        if path == '/huge':
            self.send_header('Content-Length', str(10 ** 12))
            self.end_headers()
            self.stop.wait(30)  # a client that reads the body waits for nothing
            return
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        if path == '/big':
            self.wfile.write(b'{"signals": [], "padding": "' + b'x' * (MAX_SIZE + 1) + b'"}')
        elif path == '/small':
            self.wfile.write(b'{"signals": [], "queues": [], "padding": "' + b'x' * 2000 + b'"}')
        elif path == '/trickle':
            self.wfile.write(b'{"signals": [')
            while not self.stop.wait(0.2):
                self.wfile.write(b' ')
                self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def base_url() -> Iterator[str]:
    stop = threading.Event()
    handler = type('TestHandler', (Handler,), {'stop': stop})
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    stop.set()
    server.shutdown()
    server.server_close()


def test_a_body_over_the_default_limit_is_refused(base_url: str) -> None:
    with pytest.raises(DeclarationError, match=f'more than the limit of {MAX_SIZE} bytes') as raised:
        load_stuff(f'{base_url}/big?token={SECRET}')

    assert f'{base_url}/big?token=***' in str(raised.value)
    assert SECRET not in str(raised.value)


def test_max_size_is_a_keyword(base_url: str) -> None:
    with pytest.raises(DeclarationError, match='more than the limit of 1000 bytes'):
        configure(f'{base_url}/small', max_size=1000)

    load_stuff(f'{base_url}/small', max_size=3000)  # the same document fits a larger limit


def test_a_trickling_server_meets_the_deadline(base_url: str) -> None:
    with pytest.raises(DeclarationError, match=r'no complete answer within 1.0s') as raised:
        load_stuff(f'{base_url}/trickle?password={SECRET}', timeout=1.0)

    assert SECRET not in str(raised.value)


def test_a_content_length_over_the_limit_is_refused_before_reading(base_url: str) -> None:
    # reading the body would end at the deadline, with another message
    with pytest.raises(DeclarationError, match=f'Content-Length {10 ** 12} is over the limit of 1000 bytes'):
        load_stuff(f'{base_url}/huge', max_size=1000, timeout=20)
