"""Every secret setting stays secret, wherever smsgw writes: the webapp URL's password, a
user name used alone as a token, and the heartbeat URL's token, in the output, in one-line
errors, in tracebacks (--debug and the event log), and in the event log's lines.

The settings marked secret (config.Spec.secret) are scrubbed in all the spellings config.scrub
knows; these tests give each secret raw, as a user or a bug would leak it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from runner import SmsgwRunner

from smsgw import actions, cli
from smsgw.errors import ExitCode
from smsgw.gateway import CycleReport
from smsgw.heartbeat import Heartbeat

USER_TOKEN = "Zq9UserToken"
PASSWORD = "Zq9WebappPw"
PING_TOKEN = "0c5e4b1a-Zq9Ping-77d2"
TOKEN_URL = f"https://{USER_TOKEN}@127.0.0.1:9/sms/"
WEBAPP_URL = f"https://gw:{PASSWORD}@127.0.0.1:9/sms/"
PING_URL = f"https://hc-ping.example/ping/{PING_TOKEN}"
SECRETS = (USER_TOKEN, PASSWORD, PING_TOKEN)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked in:\n{text}"


@pytest.fixture
def smsgw(tmp_path: Path) -> SmsgwRunner:
    return SmsgwRunner(tmp_path)


def test_a_user_name_alone_is_hidden_in_the_output_and_the_log(smsgw: SmsgwRunner) -> None:
    first = smsgw("config", "--no-check", "--url", TOKEN_URL)
    assert first.returncode == 0, first.stderr
    assert "https://***@127.0.0.1:9/sms/" in first.stdout
    # Replacing it logs the old URL: the filter of this run knows only the new one.
    second = smsgw("config", "--no-check", "--url", WEBAPP_URL)
    assert second.returncode == 0, second.stderr
    shown = smsgw("config")
    assert "https://gw:***@127.0.0.1:9/sms/" in shown.stdout
    log = smsgw.log_file.read_text(encoding="utf-8")
    assert "config: url changed: https://***@127.0.0.1:9/sms/ -> https://gw:***@" in log, log
    assert_no_secret(first.stdout, first.stderr, second.stdout, second.stderr, shown.stdout,
                     log)


@pytest.mark.parametrize("value", [[PING_URL], {"url": PING_URL}, 7])
def test_a_ping_url_of_the_wrong_type_is_not_echoed(smsgw: SmsgwRunner, value: object) -> None:
    smsgw.home.mkdir(mode=0o700)
    smsgw.config_file.write_text(json.dumps({"url": WEBAPP_URL, "ping_url": value}))
    smsgw.config_file.chmod(0o600)
    proc = smsgw("status")
    assert proc.returncode == ExitCode.ERROR
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smsgw: error: the settings in "), proc.stderr
    assert '"ping_url" must be an http:// or https:// URL (text), or null' in lines[0]
    assert "(got" not in lines[0]
    assert_no_secret(proc.stdout, proc.stderr)


# A bug whose message holds the secrets: nothing reaches one otherwise, so it is injected
# into `smsgw` run in this process (a mock for what cannot happen on purpose).
def _run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


def _configured(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSGW_HOME", str(home))
    monkeypatch.delenv("SMSGW_URL", raising=False)
    home.mkdir(mode=0o700)
    (home / "config.json").write_text(json.dumps({"url": WEBAPP_URL, "ping_url": PING_URL}))
    (home / "config.json").chmod(0o600)


@pytest.mark.parametrize("debug", [[], ["--debug"]])
@pytest.mark.parametrize("command, core", [
    (["send", "+15550100", "hello"], "send"),  # the event log is set up: its handler logs
    (["status"], "status"),  # no event log set up: the traceback is appended by hand
])
def test_a_bug_quoting_the_urls_leaks_neither(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str],
                                              debug: list[str], command: list[str],
                                              core: str) -> None:
    home = tmp_path / "home"
    _configured(home, monkeypatch)

    def buggy(*_args: object, **_kw: object) -> None:
        raise RuntimeError(f"bug near {WEBAPP_URL} and {PING_URL}")

    monkeypatch.setattr(actions, core, buggy)
    code, err = _run_main([*debug, *command], capsys)
    assert code == ExitCode.ERROR
    assert "smsgw: error: internal error (a bug in smsgw, please report it): RuntimeError: " \
           "bug near https://gw:***@127.0.0.1:9/sms/ and https://hc-ping.example/***" in err, err
    assert ("Traceback" in err) == bool(debug)
    log = (home / "smsgw.log").read_text(encoding="utf-8")
    assert "Traceback" in log and "RuntimeError: bug near" in log
    assert_no_secret(err, log)


def test_a_bug_in_the_heartbeat_logs_its_traceback_without_the_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    _configured(home, monkeypatch)
    paths = cli.default_paths()
    cli.setup_logging(paths, False, console=False, url=WEBAPP_URL)

    def buggy_get(url: str) -> tuple[bool, str]:
        raise ValueError(f"cannot handle {url}")

    beat = Heartbeat(PING_URL, 0, buggy_get)
    beat.after_cycle(CycleReport())
    beat.join()
    for handler in logging.getLogger("smsgw").handlers:
        handler.flush()
    log = paths.log_file.read_text(encoding="utf-8")
    # 'ping' is a word of the URL's path, yet no token: it is not blanked in the log.
    assert "internal error in the heartbeat ping (a bug in smsgw" in log
    assert "ValueError: cannot handle https://hc-ping.example/***" in log, log
    assert_no_secret(log)
    assert os.stat(paths.log_file).st_mode & 0o077 == 0
