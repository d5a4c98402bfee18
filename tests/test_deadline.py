"""A webapp that trickles its answer: the exchange ends at its deadline, nothing is lost."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import Clock

from smsgw.config import Settings
from smsgw.gateway import Gateway
from smsgw.phone.simulated import SimulatedPhone
from smsgw.store import Store
from smsgw.webapp import WebappClient

pytestmark = pytest.mark.usefixtures("no_proxies")


class Trickler(ThreadingHTTPServer):
    """POST: the first answer comes a byte a second; later ones at once. Records bodies."""

    daemon_threads = True

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.trickle = True
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = json.dumps({"messages": [{"id": "w1", "to": "+254700000001",
                                                   "content": "hello"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if outer.trickle:
                    outer.trickle = False
                    for byte in answer:
                        if outer.stop.wait(1):
                            return
                        try:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                outer.bodies.append(body)
                self.wfile.write(answer)

        super().__init__(("127.0.0.1", 0), Handler)


def test_a_trickling_answer_ends_at_the_deadline_and_the_next_cycle_sends(
        tmp_path: Path, clock: Clock) -> None:
    server = Trickler()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/sms"
    client = WebappClient(url, deadline=3, read_timeout=30)
    phone = SimulatedPhone(clock)
    phone.receive("+254711111111", "waiting for the webapp")
    gateway = Gateway(Store(tmp_path / "state"), client, phone, Settings(url=url), clock)
    try:
        report = gateway.cycle()
        # The deadline ended it: not the 30 s read timeout, nor ~90 s of trickle.
        assert [e for e in report.errors if "did not finish answering within 3 s" in e], report
        clock.advance(10)
        report = gateway.cycle()
        assert report.errors == []
        assert server.bodies[0]["messages"][0]["content"] == "waiting for the webapp"
        assert phone.sends == [("+254700000001", "hello")]
    finally:
        server.stop.set()
        server.shutdown()
        client.close()
