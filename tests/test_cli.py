"""The `smsgw` command line, run as a user runs it: real processes, a real webapp on 127.0.0.1.

Every command runs in a subprocess with its own SMSGW_HOME and HOME, so nothing here touches
the real settings. The daemon tests start a real `smsgw run` in the background and talk to it
with signals, as runit, Termux:Tasker and a person do.
"""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from runner import SmsgwRunner, wait_for

from smsgw.cli import cli
from smsgw.errors import ExitCode
from smsgw.testserver import ReferenceWebapp

PASSWORD = "S3cretPassw0rd"
QUERY_SECRET = "QuerySecret123"
SECRETS = (PASSWORD, QUERY_SECRET)


# helpers -----------------------------------------------------------------------------------
class Smsgw(SmsgwRunner):
    """Runs `smsgw` in a subprocess with an isolated SMSGW_HOME and HOME."""

    def saved(self) -> dict[str, Any]:
        return json.loads(self.config_file.read_text(encoding="utf-8"))


def assert_one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """A refusal: non-zero exit, exactly one line on stderr, no traceback. Returns that line."""
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked in:\n{text}"


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def posts(webapp: ReferenceWebapp) -> int:
    return int(webapp.snapshot()["counters"]["posts"])


# fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def smsgw(tmp_path: Path) -> Smsgw:
    return Smsgw(tmp_path)


@pytest.fixture
def webapp(make_webapp: Callable[..., ReferenceWebapp]) -> ReferenceWebapp:
    """The reference webapp with Basic auth, on 127.0.0.1."""
    return make_webapp(username="smsgw", password=PASSWORD)


@pytest.fixture
def url(webapp: ReferenceWebapp) -> str:
    """The webapp's URL with its password and a secret in the query string."""
    return f"{webapp.url}?key={QUERY_SECRET}"


@pytest.fixture
def html_server() -> Iterator[str]:
    """A server that answers GET with a 200 HTML page: a captive portal, not a webapp."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = b"<html><body><h1>Please log in to the hotspot</h1></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/smsgateway/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# help and version --------------------------------------------------------------------------
def test_help_and_version(smsgw: Smsgw) -> None:
    proc = smsgw("--help")
    assert proc.returncode == 0, proc.stderr
    for name in ("config", "status", "messages", "log", "send", "retry", "hook", "run",
                 "demo", "testserver", "doctor"):
        assert name in proc.stdout
    proc = smsgw("--version")
    assert proc.returncode == 0, proc.stderr
    from smsgw import __version__

    assert __version__ in proc.stdout
    assert "smsgw" in proc.stdout


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_subcommand_has_help(command: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [command, "--help"],
                                env={"SMSGW_HOME": str(tmp_path), "SMSGW_URL": ""})
    assert result.exit_code == 0, result.output
    assert f"Usage: cli {command}" in result.output or f"{command} [OPTIONS]" in result.output
    assert "--help" in result.output


# config: refused URLs ----------------------------------------------------------------------
@pytest.mark.parametrize("bad_url, char", [
    ("https://u:p#x@h/", "#"),
    ("https://u:p?x@h/", "?"),
    ("https://u:p/x@h/", "/"),
    ("https://u:p@x@h/", "@"),
    ("https://u:p%23x@h/", "#"),  # percent-encoding does not help with these webapps
])
def test_config_refuses_forbidden_password_char(smsgw: Smsgw, bad_url: str, char: str) -> None:
    proc = smsgw("config", "--url", bad_url)
    line = assert_one_line_error(proc)
    assert any(q.format(char) in line for q in ("'{}'", '"{}"', "`{}`")), line
    assert "password" in line
    assert not smsgw.config_file.exists()


def test_config_refuses_non_latin1_password(smsgw: Smsgw) -> None:
    proc = smsgw("config", "--url", "https://u:p€x@example.org/sms/")
    line = assert_one_line_error(proc)
    assert "ISO-8859-1" in line or "latin-1" in line.lower()
    assert "U+20AC" in line or "€" in line
    assert not smsgw.config_file.exists()


@pytest.mark.parametrize("bad_url", ["ftp://example.org/sms/", "example.org/sms/",
                                     "http:///nohost"])
def test_config_refuses_url_that_is_not_http(smsgw: Smsgw, bad_url: str) -> None:
    assert_one_line_error(smsgw("config", "--url", bad_url))
    assert not smsgw.config_file.exists()


# config: handshake -------------------------------------------------------------------------
def test_config_url_handshake_saves_private_file(smsgw: Smsgw, webapp: ReferenceWebapp,
                                                 url: str) -> None:
    proc = smsgw("config", "--url", url)
    assert proc.returncode == 0, proc.stderr
    assert "✓" in proc.stdout and "answers as a medic-gateway webapp" in proc.stdout
    assert_no_secret(proc.stdout, proc.stderr)
    assert webapp.snapshot()["counters"]["gets"] >= 1
    assert smsgw.saved()["url"] == url
    assert stat.S_IMODE(smsgw.config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(smsgw.home.stat().st_mode) == 0o700

    shown = smsgw("config")
    assert shown.returncode == 0, shown.stderr
    assert_no_secret(shown.stdout, shown.stderr)
    url_line = next(line for line in shown.stdout.splitlines() if line.startswith("url "))
    assert "smsgw:***@127.0.0.1" in url_line
    assert "key=***" in url_line


def test_config_handshake_with_latin1_password(smsgw: Smsgw) -> None:
    with ReferenceWebapp(username="smsgw", password="pässwörd") as app:
        proc = smsgw("config", "--url", app.url)
        assert proc.returncode == 0, proc.stderr
        assert app.snapshot()["counters"]["auth_failures"] == 0
    assert "pässwörd" not in proc.stdout
    assert smsgw.saved()["url"] == app.url


def test_config_no_check_saves_without_contacting(smsgw: Smsgw) -> None:
    target = f"http://smsgw:{PASSWORD}@127.0.0.1:{free_port()}/smsgateway/"
    proc = smsgw("config", "--no-check", "--url", target)
    assert proc.returncode == 0, proc.stderr
    assert "✓" not in proc.stdout
    assert smsgw.saved()["url"] == target
    assert_no_secret(proc.stdout, proc.stderr)


def test_config_refuses_url_answering_404(smsgw: Smsgw, webapp: ReferenceWebapp) -> None:
    wrong = f"{webapp.base_url}/not-the-endpoint/"
    line = assert_one_line_error(smsgw("config", "--url", wrong))
    assert "404" in line
    assert "not found" in line  # the webapp's own words
    assert "--no-check" in line
    assert not smsgw.config_file.exists()


def test_config_refuses_url_answering_html(smsgw: Smsgw, html_server: str) -> None:
    line = assert_one_line_error(smsgw("config", "--url", html_server))
    assert "200" in line
    assert "not JSON" in line
    assert "Please log in to the hotspot" in line  # a snippet of what came back
    assert "<h1>" not in line
    assert not smsgw.config_file.exists()


def test_config_refuses_url_refusing_connections(smsgw: Smsgw) -> None:
    target = f"http://smsgw:{PASSWORD}@127.0.0.1:{free_port()}/smsgateway/"
    proc = smsgw("config", "--url", target)
    line = assert_one_line_error(proc)
    assert "refused" in line.lower()
    assert_no_secret(proc.stdout, proc.stderr)
    assert not smsgw.config_file.exists()


def test_config_refused_url_keeps_earlier_settings(smsgw: Smsgw) -> None:
    good = "http://127.0.0.1:9/first/"
    assert smsgw("config", "--no-check", "--url", good).returncode == 0
    before = smsgw.config_file.read_bytes()
    assert_one_line_error(smsgw("config", "--url", f"http://127.0.0.1:{free_port()}/x/"))
    assert_one_line_error(smsgw("config", "--url", "https://u:p#x@h/"))
    assert smsgw.config_file.read_bytes() == before


# config: other options ---------------------------------------------------------------------
def test_config_options_persist(smsgw: Smsgw, tmp_path: Path) -> None:
    proc = smsgw("config", "--interval", "30", "--cdma", "--sim-slot", "1",
                 "--max-per-minute", "100", "--ttl", "24h", "--compress-requests")
    assert proc.returncode == 0, proc.stderr
    saved = smsgw.saved()
    assert saved["interval"] == 30
    assert saved["cdma_mode"] is True
    assert saved["sim_slot"] == 1
    assert saved["max_parts_per_minute"] == 100
    assert saved["message_ttl"] == 24 * 3600
    assert saved["compress_requests"] is True

    proc = smsgw("config", "--no-cdma", "--sim-slot", "none", "--ttl", "off")
    assert proc.returncode == 0, proc.stderr
    saved = smsgw.saved()
    assert saved["cdma_mode"] is False
    assert saved["sim_slot"] is None
    assert saved["message_ttl"] is None
    assert saved["interval"] == 30  # untouched options are kept
    assert saved["max_parts_per_minute"] == 100
    assert saved["compress_requests"] is True

    shown = smsgw("config").stdout
    assert any(line.split() == ["interval", "30"] for line in shown.splitlines()), shown


def test_config_ca_bundle(smsgw: Smsgw, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    line = assert_one_line_error(smsgw("config", "--ca-bundle", str(missing)))
    assert str(missing) in line
    assert not smsgw.config_file.exists()

    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    proc = smsgw("config", "--ca-bundle", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert smsgw.saved()["ca_bundle"] == str(bundle)


@pytest.mark.parametrize("args", [["--sim-slot", "two"], ["--ttl", "soon"],
                                  ["--interval", "0"], ["--max-per-minute", "0"]])
def test_config_refuses_bad_option_values(smsgw: Smsgw, args: list[str]) -> None:
    proc = smsgw("config", *args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert not smsgw.config_file.exists()


# SMSGW_URL ---------------------------------------------------------------------------------
def test_smsgw_url_overrides_the_saved_url(smsgw: Smsgw, webapp: ReferenceWebapp,
                                           url: str) -> None:
    assert smsgw("config", "--no-check", "--url", "http://127.0.0.1:9/saved/").returncode == 0
    shown = smsgw("config", env={"SMSGW_URL": url})
    assert shown.returncode == 0, shown.stderr
    assert "127.0.0.1:9/saved/" not in shown.stdout
    assert f"smsgw:***@127.0.0.1:{webapp.port}/smsgateway/?key=***" in shown.stdout
    assert_no_secret(shown.stdout, shown.stderr)

    proc = smsgw("run", "--phone", "simulated", "--once", env={"SMSGW_URL": url})
    assert proc.returncode == 0, proc.stderr
    assert posts(webapp) >= 1


def test_smsgw_url_is_not_written_into_the_config_file(smsgw: Smsgw, url: str) -> None:
    """An environment override applies to the process; `config --interval` must not save it."""
    saved_url = "http://127.0.0.1:9/saved/"
    assert smsgw("config", "--no-check", "--url", saved_url).returncode == 0
    proc = smsgw("config", "--interval", "30", env={"SMSGW_URL": url})
    assert proc.returncode == 0, proc.stderr
    assert smsgw.saved()["interval"] == 30
    assert smsgw.saved()["url"] == saved_url


# status ------------------------------------------------------------------------------------
def test_status_fresh_json(smsgw: Smsgw, url: str) -> None:
    assert smsgw("config", "--no-check", "--url", url).returncode == 0
    proc = smsgw("status", "--json")
    assert proc.returncode == ExitCode.DAEMON_DOWN, proc.stderr
    assert_no_secret(proc.stdout, proc.stderr)
    data = json.loads(proc.stdout)
    assert data["healthy"] is False
    assert data["exit_code"] == ExitCode.DAEMON_DOWN
    assert data["daemon"] == {"running": False, "pid": None, "since": None}
    webapp = data["webapp"]
    assert "***" in webapp["url"] and webapp["url"].startswith("http://smsgw:***@127.0.0.1:")
    assert webapp["last_exchange_ok"] is None
    assert webapp["last_error"] is None
    queues = data["queues"]
    for state in ("UNSENT", "SENDING", "PENDING", "SENT", "FAILED"):
        assert queues["outgoing"][state] == 0
    assert queues["oldest_waiting"] is None
    assert queues["next_retry"] is None
    assert data["last_failures"] == []
    assert data["phone"]["last_error"] is None
    assert data["rate"] == {"parts_last_minute": 0, "max_parts_per_minute": 30}

    text = smsgw("status")
    assert text.returncode == ExitCode.DAEMON_DOWN
    assert "NOT RUNNING" in text.stdout
    assert_no_secret(text.stdout, text.stderr)


def test_status_without_any_setting(smsgw: Smsgw) -> None:
    proc = smsgw("status")
    assert proc.returncode == ExitCode.DAEMON_DOWN, proc.stderr
    assert "not configured" in proc.stdout
    code, data = smsgw.status_json()
    assert code == ExitCode.DAEMON_DOWN
    assert data["webapp"]["url"] is None


def test_run_once_then_status_and_log(smsgw: Smsgw, webapp: ReferenceWebapp, url: str) -> None:
    proc = smsgw("run", "--phone", "simulated", "--once", "--url", url)
    assert proc.returncode == 0, proc.stderr
    assert_no_secret(proc.stdout, proc.stderr)
    assert posts(webapp) >= 1
    assert webapp.snapshot()["header_violations"] == []

    code, data = smsgw.status_json()
    assert code == ExitCode.DAEMON_DOWN  # the run ended
    assert data["webapp"]["last_exchange_ok"] is not None
    assert data["webapp"]["last_error"] is None
    assert "last exchange: never" not in smsgw("status").stdout

    log = smsgw("log", "-n", "5")
    assert log.returncode == 0, log.stderr
    lines = log.stdout.splitlines()
    assert 1 <= len(lines) <= 5
    assert stat.S_IMODE(smsgw.log_file.stat().st_mode) == 0o600
    assert_no_secret(log.stdout, smsgw.log_file.read_text(encoding="utf-8"))


def test_log_before_any_run(smsgw: Smsgw) -> None:
    line = assert_one_line_error(smsgw("log"))
    assert "smsgw run" in line


def test_status_after_webapp_error_shows_its_words_without_secrets(
        smsgw: Smsgw, webapp: ReferenceWebapp, url: str) -> None:
    # The webapp's error message echoes both secrets back: status must show it, scrubbed.
    echo = f"invalid key {QUERY_SECRET} for smsgw:{PASSWORD} at {url}"
    webapp.set_fault("status", status=500, body={"error": True, "message": echo})
    # The URL is given for this run only: status cannot scrub with it, so what was stored
    # must already be clean.
    # --debug: the most talkative run must not leak either.
    proc = smsgw("--debug", "run", "--phone", "simulated", "--once", "--url", url)
    assert proc.returncode == 4, proc.stderr  # --once: the exchange failed (WEBAPP_FAILING)
    assert "invalid key" in proc.stderr
    assert_no_secret(proc.stdout, proc.stderr)

    code, data = smsgw.status_json()
    assert code == ExitCode.DAEMON_DOWN
    err = data["webapp"]["last_error"]
    assert err is not None
    assert err["status"] == 500
    assert "invalid key" in err["message"]
    assert "500" in err["text"]
    assert data["webapp"]["consecutive_failures"] == 1
    text = smsgw("status")
    assert "invalid key" in text.stdout
    for out in (json.dumps(data), text.stdout, text.stderr,
                smsgw.log_file.read_text(encoding="utf-8"), smsgw.state_file.read_text()):
        assert_no_secret(out)

    # With the URL saved, and a daemon-less state that says "failing": still clean.
    assert smsgw("config", "--no-check", "--url", url).returncode == 0
    again = smsgw("status", "--json")
    assert_no_secret(again.stdout, again.stderr)
    assert json.loads(again.stdout)["webapp"]["failing"] is True


def test_failed_message_shows_in_status_and_can_be_retried(
        smsgw: Smsgw, webapp: ReferenceWebapp, url: str) -> None:
    webapp.queue("not a number", "cannot be sent", id="bad-1")
    proc = smsgw("run", "--phone", "simulated", "--once", "--url", url)
    assert proc.returncode == 0, proc.stderr
    assert webapp.status_of("bad-1") == "FAILED"
    _, data = smsgw.status_json()
    failures = data["last_failures"]
    assert [f["id"] for f in failures] == ["bad-1"]
    assert failures[0]["reason"]

    retried = smsgw("retry", "bad-1")
    assert retried.returncode == 0, retried.stderr
    assert "bad-1: queued again" in retried.stdout
    again = smsgw("retry", "bad-1")
    assert again.returncode == ExitCode.WRONG_STATE, again.stderr
    assert "not FAILED" in again.stderr


# send / retry / hook -----------------------------------------------------------------------
def test_send_queues_a_local_message(smsgw: Smsgw) -> None:
    proc = smsgw("send", "+15551234567", "hi")
    assert proc.returncode == 0, proc.stderr
    assert "queued local-" in proc.stdout
    assert "no daemon is running" in proc.stderr
    listed = smsgw("messages", "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    [msg] = data["from_webapp"]
    assert msg["id"].startswith("local-")
    assert msg["to"] == "+15551234567"
    assert msg["content"] == "hi"
    assert msg["state"] == "UNSENT"
    assert data["to_webapp"] == []
    _, status = smsgw.status_json()
    assert status["queues"]["outgoing"]["UNSENT"] == 1
    assert status["queues"]["oldest_waiting"]["id"] == msg["id"]
    assert smsgw("messages").returncode == 0


@pytest.mark.parametrize("number", ["abc;rm", "--help-me", "+1 555 $(id)"])
def test_send_refuses_a_bad_number(smsgw: Smsgw, number: str) -> None:
    line = assert_one_line_error(smsgw("send", "--", number, "hi"))
    assert "not a phone number" in line
    assert json.loads(smsgw("messages", "--json").stdout)["from_webapp"] == []


def test_send_refuses_empty_text(smsgw: Smsgw) -> None:
    assert_one_line_error(smsgw("send", "+15551234567", "   "))


def test_retry_unknown_id(smsgw: Smsgw) -> None:
    proc = smsgw("retry", "nope")
    assert proc.returncode == ExitCode.NOT_FOUND
    assert "nope" in proc.stderr and "no such message" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_retry_without_arguments_is_a_usage_error(smsgw: Smsgw) -> None:
    proc = smsgw("retry")
    assert proc.returncode == ExitCode.USAGE
    assert "smsgw retry --help" in proc.stderr  # was click's "Usage:" block: one line now
    assert "--failed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_retry_failed_with_nothing_failed(smsgw: Smsgw) -> None:
    proc = smsgw("retry", "--failed")
    assert proc.returncode == 0, proc.stderr
    assert "no FAILED message to retry" in proc.stdout


def test_hook_without_daemon(smsgw: Smsgw) -> None:
    proc = smsgw("hook")
    assert proc.returncode == ExitCode.DAEMON_DOWN
    assert "no daemon is running" in proc.stderr
    assert "Traceback" not in proc.stderr


# run: refusals -----------------------------------------------------------------------------
def test_run_without_url(smsgw: Smsgw) -> None:
    line = assert_one_line_error(smsgw("run", "--phone", "simulated", "--once"))
    assert "no webapp URL" in line
    assert "smsgw config --url" in line


def test_run_refuses_a_bad_url_option(smsgw: Smsgw) -> None:
    proc = smsgw("run", "--phone", "simulated", "--once", "--url", f"https://u:{PASSWORD}#@h/")
    line = assert_one_line_error(proc)
    assert "'#'" in line
    assert_no_secret(proc.stdout, proc.stderr)


def test_run_without_termux_api(smsgw: Smsgw, tmp_path: Path) -> None:
    # termux-sms-list is there, termux-sms-send is not: still not usable.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lister = bin_dir / "termux-sms-list"
    lister.write_text("#!/bin/sh\necho '[]'\n", encoding="ascii")
    lister.chmod(0o755)
    assert smsgw("config", "--no-check", "--url", "http://127.0.0.1:9/sms/").returncode == 0
    proc = smsgw("run", "--once", env={"PATH": str(bin_dir)})
    line = assert_one_line_error(proc)
    assert "pkg install termux-api" in line
    assert "--phone simulated" in line


# damaged state -----------------------------------------------------------------------------
def test_damaged_state_file_is_reported_and_kept(smsgw: Smsgw, url: str) -> None:
    assert smsgw("send", "+15551234567", "hi").returncode == 0  # creates the state
    garbage = b'{"outgoing": {"1": {"id": "x", \x00 this is not json'
    smsgw.state_file.write_bytes(garbage)

    for args in (["status"], ["status", "--json"], ["messages", "--json"],
                 ["run", "--phone", "simulated", "--once", "--url", url]):
        proc = smsgw(*args)
        line = assert_one_line_error(proc)
        assert str(smsgw.state_file) in line, args
        assert "damaged" in line
        assert smsgw.state_file.read_bytes() == garbage

    debug = smsgw("--debug", "status")
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr
    assert str(smsgw.state_file) in debug.stderr.splitlines()[-1]
    assert smsgw.state_file.read_bytes() == garbage


def test_damaged_config_file_is_reported(smsgw: Smsgw) -> None:
    smsgw.home.mkdir()
    smsgw.config_file.write_text("{not json", encoding="utf-8")
    line = assert_one_line_error(smsgw("status"))
    assert str(smsgw.config_file) in line
    assert smsgw.config_file.read_text(encoding="utf-8") == "{not json"


# the daemon --------------------------------------------------------------------------------
def test_daemon_lifecycle(smsgw: Smsgw, webapp: ReferenceWebapp, url: str,
                          tmp_path: Path) -> None:
    assert smsgw("config", "--url", url).returncode == 0
    daemon_out = tmp_path / "daemon.out"
    with smsgw.daemon("--phone", "simulated", "--interval", "60", out=daemon_out) as daemon:
        def first_cycle_done() -> dict[str, Any] | None:
            assert daemon.poll() is None, daemon_out.read_text(errors="replace")
            _, data = smsgw.status_json()
            ok = data["daemon"]["running"] and data["webapp"]["last_exchange_ok"]
            return data if ok else None

        data = wait_for(first_cycle_done, 30, "the daemon's first cycle")
        assert data["daemon"]["pid"] == daemon.pid
        assert data["daemon"]["since"]

        status = smsgw("status")
        assert status.returncode == ExitCode.OK, status.stdout + status.stderr
        assert f"running (pid {daemon.pid}" in status.stdout
        assert "healthy" in status.stdout
        as_json = smsgw("status", "--json")
        assert as_json.returncode == ExitCode.OK
        assert json.loads(as_json.stdout)["healthy"] is True
        assert_no_secret(status.stdout, status.stderr, as_json.stdout, as_json.stderr)

        second = smsgw("run", "--phone", "simulated")
        assert second.returncode == ExitCode.ALREADY_RUNNING, second.stderr
        assert "already running" in second.stderr
        assert str(daemon.pid) in second.stderr
        assert "Traceback" not in second.stderr
        assert daemon.poll() is None

        changed = smsgw("config", "--max-per-minute", "25")
        assert changed.returncode == 0
        assert "restart the daemon" in changed.stdout

        before = posts(webapp)
        hooked = smsgw("hook")
        assert hooked.returncode == 0, hooked.stderr
        assert f"woke smsgw (pid {daemon.pid})" in hooked.stdout
        # The next scheduled cycle is 60 s away: a POST now can only come from the wake-up.
        wait_for(lambda: posts(webapp) > before, 10, "a POST after the hook")
        wait_for(lambda: "woken for an immediate cycle" in smsgw.log_file.read_text("utf-8"),
                 10, "the wake-up in the log")

        # The webapp fails (echoing the secrets): status says so, exit 4, still no secret.
        echo = f"invalid key {QUERY_SECRET} for smsgw:{PASSWORD}"
        webapp.set_fault("status", status=500, body={"error": True, "message": echo})
        assert smsgw("hook").returncode == 0

        def status_code(want: int) -> subprocess.CompletedProcess[str] | None:
            proc = smsgw("status")
            return proc if proc.returncode == want else None

        failing = wait_for(lambda: status_code(ExitCode.WEBAPP_FAILING), 10,
                           "status to report the failing webapp")
        assert "FAILING" in failing.stdout and "invalid key ***" in failing.stdout
        failing_json = smsgw("status", "--json")
        assert failing_json.returncode == ExitCode.WEBAPP_FAILING
        assert json.loads(failing_json.stdout)["webapp"]["last_error"]["status"] == 500
        assert_no_secret(failing.stdout, failing.stderr, failing_json.stdout)
        assert smsgw("hook").returncode == 0  # the fault was for one POST only
        wait_for(lambda: status_code(ExitCode.OK), 10, "status to be healthy again")

        queued = smsgw("send", "+15551234567", "hello from the test")
        assert queued.returncode == 0
        assert "no daemon is running" not in queued.stderr
    out = daemon_out.read_text(encoding="utf-8", errors="replace")
    assert_no_secret(out, smsgw.log_file.read_text(encoding="utf-8"))
    assert not smsgw.pid_file.exists()

    after = smsgw("status")
    assert after.returncode == ExitCode.DAEMON_DOWN, after.stderr
    assert "NOT RUNNING" in after.stdout
    listed = smsgw("messages", "--json")
    assert listed.returncode == 0, listed.stderr
    ids = [m["id"] for m in json.loads(listed.stdout)["from_webapp"]]
    assert any(i.startswith("local-") for i in ids)
    assert smsgw("hook").returncode == ExitCode.DAEMON_DOWN


# demo --------------------------------------------------------------------------------------
def test_demo(smsgw: Smsgw) -> None:
    proc = smsgw("demo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo complete" in proc.stdout
    for msg_id in ("demo-hello", "demo-long", "demo-bad-number", "demo-twice"):
        assert msg_id in proc.stdout
    assert "Traceback" not in proc.stderr
    assert not smsgw.home.exists()  # the demo keeps its state in a temporary folder
