"""Security: secrets stay secret, files stay private, TLS is verified, the phone's command line
carries nothing from outside, and answers cannot exhaust memory.

Everything here runs the real `smsgw` command in subprocesses, as a user would, with its own
SMSGW_HOME and HOME, the fake termux-* executables on PATH, and the reference webapp on
127.0.0.1 with Basic auth (password PASSWORD) and a key in the query string (QUERY_SECRET).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from fakes import FakeTermux

from smsgw.testserver import ReferenceWebapp

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
USER = "smsgw"
PASSWORD = "Zq9SecretPW"
QUERY_SECRET = "Zq9QueryKey77"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, QUERY_SECRET, BASIC)
TIMEOUT = 60  # seconds: only to prove that a command did not hang
# Text that a shell or `echo` would act on, and that would break an argument list.
HOSTILE_TEXT = ("-n hello $(id) `uname -a`; rm -rf / \\c\n'single' \"double\" | cat >&2 && "
                "echo pwned > /tmp/x #")
HOSTILE_NUMBERS = ["-s 1", "--help", "+1555;reboot", "$(id)", "+15550100,+15550199", "`id`",
                   "+15550100\n-n 999", "1555|cat", "+1555 & echo", "'+15550100'", "-n",
                   "+1555>/tmp/x", "*", "../../bin/sh", "+1555\x000100"]
NUMBER_ARG = re.compile(r"\+?[0-9]{3,20}")
MEMORY_MARGIN_MB = 40  # a 50 MB body or a 1.1 GB bomb read whole would blow far past this

# Run smsgw's CLI; at exit, record the process's peak RSS where SMSGW_TEST_HWM says.
CLI = """
import atexit, os
def _hwm():
    path = os.environ.get("SMSGW_TEST_HWM")
    if path:
        with open("/proc/self/status") as fh:
            peak = [line.split()[1] for line in fh if line.startswith("VmHWM")][0]
        with open(path, "w") as out:
            out.write(peak)
atexit.register(_hwm)
from smsgw.cli import main
main()
"""


class Smsgw:
    """`smsgw` in subprocesses with an isolated home, the fakes on PATH, no proxies."""

    def __init__(self, tmp: Path, fake: FakeTermux) -> None:
        self.home = tmp / "smsgw-home"
        user_home = tmp / "user-home"
        user_home.mkdir()
        env = {k: v for k, v in fake.env.items()
               if not k.startswith(("SMSGW_", "XDG_", "REQUESTS_CA", "SSL_CERT", "CURL_CA"))
               and k != "PYTHONPATH" and not k.lower().endswith("_proxy")}
        env.update(SMSGW_HOME=str(self.home), HOME=str(user_home), PYTHONPATH=str(REPO),
                   NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1",
                   SMSGW_TEST_HWM=str(tmp / "hwm"))
        self.env = env
        self.hwm_file = tmp / "hwm"
        self.outputs: list[str] = []  # everything every command printed, for the scans

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-c", CLI, *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL)
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def peak_mb(self) -> float:
        """Peak RSS of the last command, in MB."""
        return int(self.hwm_file.read_text()) / 1024

    @property
    def config_file(self) -> Path:
        return self.home / "config.json"


def assert_no_secret(text: str, where: str = "output") -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked in {where}:\n{text}"


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def fake(tmp_path: Path) -> FakeTermux:
    phone = FakeTermux(tmp_path / "phone")
    # Rows dated 6 s back: a sent row is then old enough to confirm on the next run (SETTLE),
    # and still recent enough to match its send (ROW_SLACK), without waiting in real time.
    phone.set_mode(clock_offset=-6)
    return phone


@pytest.fixture
def smsgw(tmp_path: Path, fake: FakeTermux) -> Smsgw:
    return Smsgw(tmp_path, fake)


@pytest.fixture
def webapp(make_webapp: Callable[..., ReferenceWebapp]) -> ReferenceWebapp:
    return make_webapp(username=USER, password=PASSWORD)


@pytest.fixture
def url(webapp: ReferenceWebapp) -> str:
    return f"{webapp.url}?key={QUERY_SECRET}&gw=1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- a full run: secrets in no output and no file ------------------------------------------

def test_full_run_leaks_no_secret_and_keeps_files_private(
        smsgw: Smsgw, webapp: ReferenceWebapp, url: str, fake: FakeTermux) -> None:
    proc = smsgw("config", "--url", url)
    assert proc.returncode == 0, proc.stderr
    assert "answers as a medic-gateway webapp" in proc.stdout
    smsgw("doctor", "--timeout", "10")  # fails on the missing boot script: only output matters
    proc = smsgw("run", "--once")  # first start: the inbox position is set
    assert proc.returncode == 0, proc.stderr

    fake.receive("+254711000001", f"reply with my key {QUERY_SECRET[:4]}")
    good = webapp.queue("+254 700-000 001", HOSTILE_TEXT)
    bad = {webapp.queue(number, f"never sent to {number!r}"): number
           for number in HOSTILE_NUMBERS}
    for _ in range(3):  # receive, send, confirm, report
        proc = smsgw("run", "--once")
        assert proc.returncode == 0, proc.stderr
    assert webapp.status_of(good) == "SENT"
    for msg_id, number in bad.items():
        assert webapp.status_of(msg_id) == "FAILED", number
        assert any(u["id"] == msg_id and "invalid phone number" in (u["reason"] or "")
                   for u in webapp.updates()), number
    assert [m["content"] for m in webapp.received()] == [f"reply with my key {QUERY_SECRET[:4]}"]

    # The webapp fails, echoing every secret; then once more with --debug.
    echo = f"bad key {QUERY_SECRET} for {USER}:{PASSWORD} at {url}"
    webapp.set_fault("status", status=500, body={"error": True, "message": echo})
    proc = smsgw("run", "--once")
    assert proc.returncode == 4, proc.stderr
    assert "bad key ***" in proc.stderr
    webapp.set_fault("status", status=502, body=f"<html><body>{echo}</body></html>")
    proc = smsgw("--debug", "run", "--once")
    assert proc.returncode == 4, proc.stderr

    status = smsgw("status")
    assert status.returncode == 3, status.stderr  # no daemon running
    assert "bad key ***" in status.stdout or "HTTP 502" in status.stdout
    as_json = smsgw("status", "--json")
    assert json.loads(as_json.stdout)["webapp"]["last_error"]["status"] == 502
    listed = smsgw("messages", "--json", "--limit", "100")
    assert listed.returncode == 0, listed.stderr
    assert any(m["content"] == HOSTILE_TEXT for m in json.loads(listed.stdout)["from_webapp"])
    log = smsgw("log", "-n", "10000")
    assert log.returncode == 0 and "bad key ***" in log.stdout

    # Errors with a traceback (--debug), for a URL given on the command line only.
    other = f"http://{USER}:Zq9OtherPW@127.0.0.1:{free_port()}/sms/?key={QUERY_SECRET}"
    proc = smsgw("--debug", "config", "--url", other)
    assert proc.returncode != 0 and "Traceback" in proc.stderr, proc.stderr
    assert "Zq9OtherPW" not in proc.stdout + proc.stderr
    proc = smsgw("--debug", "run", "--once", "--url", other)
    assert proc.returncode == 4, proc.stderr
    assert "Zq9OtherPW" not in proc.stdout + proc.stderr

    for text in smsgw.outputs:
        assert_no_secret(text)

    # Every file but config.json is free of secrets; every file is private.
    files = [p for p in smsgw.home.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "state.json", "smsgw.log", "state.lock",
                                       "daemon.lock"}
    assert any(p.parent.name == "archive" for p in files)
    for path in files:
        if path != smsgw.config_file:
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, f"{secret!r} in {path}"
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is not private"
    for name in ("config.json", "state/state.json", "smsgw.log"):
        assert stat.S_IMODE((smsgw.home / name).stat().st_mode) == 0o600, name
    assert PASSWORD in smsgw.config_file.read_text(encoding="utf-8")  # where it must be
    for folder in [smsgw.home, *[p for p in smsgw.home.rglob("*") if p.is_dir()]]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, f"{folder} is not 0700"


def test_echoed_authorization_header_is_scrubbed(smsgw: Smsgw, webapp: ReferenceWebapp,
                                                 url: str) -> None:
    """A webapp's debug error page that dumps the request headers shows the Basic auth header:
    base64 of user:password, as good as the password. It must not reach status or the log."""
    assert smsgw("config", "--url", url).returncode == 0
    dump = (f"<html><body><h1>500 Internal Server Error</h1><pre>HTTP_AUTHORIZATION = "
            f"'Basic {BASIC}'</pre></body></html>")
    webapp.set_fault("status", status=500, body=dump)
    assert smsgw("run", "--once", "--phone", "simulated").returncode == 4
    status = smsgw("status", "--json")
    assert "HTTP_AUTHORIZATION" in status.stdout  # the page's words are kept...
    log = (smsgw.home / "smsgw.log").read_text(encoding="utf-8")
    state = (smsgw.home / "state" / "state.json").read_text(encoding="utf-8")
    for where, text in (("status", status.stdout), ("the log", log), ("state.json", state)):
        assert BASIC not in text, f"the Basic credentials leaked in {where}"  # ...not the key


# --- the phone's command line -------------------------------------------------------------------

def test_numbers_and_text_never_reach_a_command_line(
        smsgw: Smsgw, webapp: ReferenceWebapp, url: str, fake: FakeTermux) -> None:
    assert smsgw("config", "--url", url).returncode == 0
    assert smsgw("run", "--once").returncode == 0
    good = webapp.queue("+254700000001", HOSTILE_TEXT)
    refused = [webapp.queue(number, "hostile number") for number in HOSTILE_NUMBERS]
    for number in ("-s 1", "+1555;reboot", "$(id)", "+15550100,+15550199"):
        proc = smsgw("send", "--", number, HOSTILE_TEXT)
        assert "not a phone number" in one_line_error(proc)
    for _ in range(3):
        assert smsgw("run", "--once").returncode == 0
    assert webapp.status_of(good) == "SENT"
    assert all(webapp.status_of(msg_id) == "FAILED" for msg_id in refused)

    calls = fake.calls()
    sends = [c for c in calls if c["name"] == "termux-sms-send"]
    assert len(sends) == 1, sends
    assert sends[0]["argv"][0] == "-n" and len(sends[0]["argv"]) == 2
    assert NUMBER_ARG.fullmatch(sends[0]["argv"][1]), sends[0]["argv"]
    # The text went on stdin, whole (Termux:API reads to EOF), and never in an argument.
    assert sends[0]["stdin_len"] == len(HOSTILE_TEXT)
    fragments = ["pwned", "$(id)", "uname", "rm -rf", "hello", "hostile"]
    for call in calls:
        for arg in call["argv"]:
            assert not any(f in arg for f in fragments), call
            assert not any(number in arg for number in HOSTILE_NUMBERS if number != "-n"), call
    [row] = fake.rows("sent")
    assert row["address"] == "+254700000001"
    assert row["body"] == HOSTILE_TEXT.strip()  # Java's trim(), nothing else changed


# --- TLS ------------------------------------------------------------------------------------------

@pytest.fixture
def tls_webapp(tmp_path: Path) -> Iterator[tuple[ReferenceWebapp, Path]]:
    """The reference webapp over HTTPS with a certificate from a private CA (trustme)."""
    ca = trustme.CA()
    bundle = tmp_path / "webapp-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    app = ReferenceWebapp(username=USER, password=PASSWORD)
    app.start()
    # Before any client connects; the listening descriptor (watched by the server's
    # selector) stays the same, only accept() now does a TLS handshake.
    app._server.socket = ctx.wrap_socket(app._server.socket, server_side=True)  # type: ignore[union-attr]
    try:
        yield app, bundle
    finally:
        app.stop()


def test_tls_verified_by_default(smsgw: Smsgw, tls_webapp: tuple[ReferenceWebapp, Path]) -> None:
    app, bundle = tls_webapp
    https = app.url.replace("http://", "https://", 1) + f"?key={QUERY_SECRET}"
    assert smsgw("config", "--interval", "30").returncode == 0
    before = smsgw.config_file.read_bytes()

    line = one_line_error(smsgw("config", "--url", https))
    assert "certificate verif" in line and "--ca-bundle" in line, line
    assert "settings not saved" in line
    assert smsgw.config_file.read_bytes() == before
    assert app.snapshot()["counters"]["gets"] == 0  # refused before any request was made

    proc = smsgw("config", "--url", https, "--ca-bundle", str(bundle))
    assert proc.returncode == 0, proc.stderr
    saved = json.loads(smsgw.config_file.read_text(encoding="utf-8"))
    assert saved["ca_bundle"] == str(bundle) and saved["url"] == https
    proc = smsgw("run", "--once", "--phone", "simulated")
    assert proc.returncode == 0, proc.stderr
    assert app.snapshot()["counters"]["posts"] == 1

    # A run told to use another URL on the same server without the bundle is refused too.
    assert smsgw("config", "--ca-bundle", "").returncode == 0
    proc = smsgw("run", "--once", "--phone", "simulated")
    assert proc.returncode == 4
    assert "certificate verif" in proc.stderr
    for text in smsgw.outputs:
        assert_no_secret(text)


# --- response size caps ---------------------------------------------------------------------

def test_huge_answers_refused_with_bounded_memory(smsgw: Smsgw, webapp: ReferenceWebapp,
                                                  url: str) -> None:
    assert smsgw("config", "--url", url).returncode == 0
    proc = smsgw("run", "--once", "--phone", "simulated")
    assert proc.returncode == 0, proc.stderr
    baseline = smsgw.peak_mb()
    peaks = {}
    for kind in ("huge", "gzip_bomb"):
        webapp.set_fault(kind)  # 50 MB of JSON; 1 MB that inflates to 1.1 GB
        proc = smsgw("run", "--once", "--phone", "simulated")
        assert proc.returncode == 4, proc.stderr
        assert "refused an answer larger than 10 MB" in proc.stderr
        peaks[kind] = smsgw.peak_mb()
    print(f"\n  smsgw run --once peak RSS: normal {baseline:.0f} MB, 50 MB body "
          f"{peaks['huge']:.0f} MB, gzip bomb {peaks['gzip_bomb']:.0f} MB")
    for kind, peak in peaks.items():
        assert peak < baseline + MEMORY_MARGIN_MB, (kind, peak, baseline)
    snap: dict[str, Any] = webapp.snapshot()
    assert [e["fault"] for e in snap["raw"]][-2:] == ["huge", "gzip_bomb"]
