"""`smsgw messages` filters, `smsgw cancel`, id prefixes and shell completion, run as a user
runs them: every command in a subprocess (tests/runner.py), the phone faked by the fake
termux-* executables on PATH (or `--phone simulated`), the reference webapp on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeTermux
from runner import TIMEOUT, SmsgwRunner, wait_for

from smsgw.errors import ExitCode
from smsgw.models import Ref
from smsgw.testserver import ReferenceWebapp

pytest_plugins = ["fakes.fixtures"]
pytestmark = pytest.mark.usefixtures("no_proxies")

STATES = ["UNSENT", "SENDING", "PENDING", "SENT", "DELIVERED", "FAILED", "WAITING",
          "FORWARDED", "SET_ASIDE"]


class Smsgw(SmsgwRunner):
    """`smsgw` in a subprocess over the fake Termux:API."""

    def __init__(self, tmp: Path, fake: FakeTermux) -> None:
        self.fake = fake
        super().__init__(tmp, {k: v for k, v in fake.env.items()
                               if k in ("PATH", "FAKE_TERMUX_DIR")})

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        proc = self(*args, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        return proc.stdout

    def listed(self, *args: str) -> dict[str, Any]:
        return json.loads(self.ok("messages", "--json", *args))

    def ids(self, *args: str) -> tuple[list[str], list[str]]:
        data = self.listed(*args)
        return [m["id"] for m in data["from_webapp"]], [m["id"] for m in data["to_webapp"]]

    def send(self, number: str, text: str, ago: timedelta | None = None) -> str:
        """A local message queued with `smsgw send` (`ago`: by a clock that far behind)."""
        env = {"SMSGW_TEST_CLOCK_OFFSET": str(-ago.total_seconds())} if ago else None
        out = self.ok("send", number, text, env=env)
        return out.split()[1]

    def complete(self, *words: str) -> list[tuple[str, str]]:
        """What bash completion offers for the last word, as click's bash script asks."""
        proc = self(env={"_SMSGW_COMPLETE": "bash_complete",
                         "COMP_WORDS": " ".join(("smsgw", *words)),
                         "COMP_CWORD": str(len(words))})
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "", proc.stderr
        return [tuple(line.split(",", 1)) for line in proc.stdout.splitlines()  # type: ignore[misc]
                if line]


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def smsgw(tmp_path: Path, fake_termux: FakeTermux) -> Smsgw:
    return Smsgw(tmp_path, fake_termux)


@pytest.fixture
def webapp(make_webapp: Callable[..., ReferenceWebapp]) -> ReferenceWebapp:
    return make_webapp()


# messages ----------------------------------------------------------------------------------
def test_filters_apply_before_the_limit_and_combine(smsgw: Smsgw, fake_termux: FakeTermux,
                                                    webapp: ReferenceWebapp) -> None:
    smsgw.ok("config", "--url", webapp.url)
    fake_termux.receive("+254 711 000 001", "from one")
    fake_termux.receive("+254711000002", "from two")
    fake_termux.receive("MPESA", "from a sender name")
    webapp.queue("+254711000001", "to one", id="w-1")
    webapp.queue("+254711000003", "to three", id="w-3")
    smsgw.ok("run", "--once")
    old = [smsgw.send("+254711000001", f"old {k}", ago=timedelta(hours=5)) for k in range(3)]
    new = [smsgw.send("0711000001", f"new {k}") for k in range(2)]
    out, incoming = smsgw.ids()
    assert out == ["w-1", "w-3", *old, *new]  # in arrival order
    assert len(incoming) == 3

    # --number: the end of the digits, in both directions, spaces and + ignored
    out, incoming = smsgw.ids("--number", "711 000 001")
    assert out == ["w-1", *old, *new]
    assert len(incoming) == 1
    assert smsgw.listed("--number", "+254-711-000-001")["to_webapp"][0]["content"] == "from one"
    out, incoming = smsgw.ids("--number", "+254711000001")
    assert out == ["w-1", *old]  # 0711000001 does not end with 254711000001
    out, incoming = smsgw.ids("--number", "mpesa")
    assert out == [] and len(incoming) == 1

    # --direction
    data = smsgw.listed("--direction", "in")
    assert data["from_webapp"] == [] and len(data["to_webapp"]) == 3
    text = smsgw.ok("messages", "--direction", "out")
    assert "From webapp (7):" in text and "To webapp" not in text

    # --since / --until: durations back from now, or dates with their zone
    out, incoming = smsgw.ids("--since", "1h")
    assert out == ["w-1", "w-3", *new] and len(incoming) == 3
    out, incoming = smsgw.ids("--until", "4h")
    assert out == old and incoming == []
    cut = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    assert smsgw.ids("--until", cut) == (old, [])
    assert smsgw.ids("--since", cut)[0] == ["w-1", "w-3", *new]

    # --id: a prefix, both directions
    assert smsgw.ids("--id", "w-")[0] == ["w-1", "w-3"]
    assert smsgw.ids("--id", old[1])[0] == [old[1]]

    # --state, case ignored, several
    assert smsgw.ids("--state", "unsent")[0] == [*old, *new]
    out, incoming = smsgw.ids("--state", "pending", "--state", "FORWARDED")
    assert out == ["w-1", "w-3"] and len(incoming) == 3

    # combined, then cut by --limit (the newest kept, the rest counted)
    data = smsgw.listed("--number", "711000001", "--direction", "out", "--since", "10h",
                        "--state", "UNSENT", "--limit", "2")
    assert [m["id"] for m in data["from_webapp"]] == new
    assert data["more_from_webapp"] == 3 and data["more_to_webapp"] == 0
    text = smsgw.ok("messages", "--number", "711000001", "--state", "UNSENT", "--limit", "2")
    assert "From webapp (2):" in text
    assert "... and 3 more (--limit)" in text
    assert "To webapp (0):" in text


def test_times_are_utc_and_texts_cut_unless_full(smsgw: Smsgw) -> None:
    long_text = "Karibu kliniki kesho saa tatu asubuhi, " * 4 + "THE END"
    msg_id = smsgw.send("+254711000001", long_text)
    text = smsgw.ok("messages")
    assert "THE END" not in text
    assert repr(long_text[:60]) + "…" in text
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert f"created {today} " in text and " UTC" in text
    full = smsgw.ok("messages", "--full")
    assert repr(long_text) in full
    assert f"UNSENT {today} " in full  # each state with its time
    record = smsgw.listed()["from_webapp"][0]
    assert record["id"] == msg_id and record["content"] == long_text
    assert record["created"].endswith("+00:00")


@pytest.mark.parametrize("args", [("--state", "bogus"), ("--state", "FAILED", "--state", "nope")])
def test_a_bogus_state_is_a_one_line_error_listing_the_valid_ones(
        smsgw: Smsgw, args: tuple[str, ...]) -> None:
    proc = smsgw("messages", *args)
    assert proc.returncode == ExitCode.USAGE
    line = one_line_error(proc)
    assert line.startswith("smsgw: error: unknown state ")
    assert repr(args[-1]) in line
    assert line.endswith("valid states: " + ", ".join(STATES))
    assert proc.stdout == ""


@pytest.mark.parametrize(("option", "value"), [("--since", "yesterday"), ("--until", "2h30")])
def test_a_bad_time_is_a_one_line_error(smsgw: Smsgw, option: str, value: str) -> None:
    proc = smsgw("messages", option, value)
    assert proc.returncode == ExitCode.USAGE
    assert one_line_error(proc).startswith(f"smsgw: error: {option}: not a date and time")


def test_messages_json_has_help(smsgw: Smsgw) -> None:
    text = smsgw.ok("messages", "--help")
    assert "--json" in text and "stable for scripts" in text and "from_webapp" in text


# cancel ------------------------------------------------------------------------------------
def test_cancel_while_the_daemon_runs_is_heard_by_the_webapp(
        smsgw: Smsgw, fake_termux: FakeTermux, webapp: ReferenceWebapp,
        tmp_path: Path) -> None:
    smsgw.ok("config", "--url", webapp.url)
    fake_termux.set_mode(radio_off=1)  # each try fails: the message waits for its retry
    msg_id = webapp.queue("+254711000001", "never mind", id="w-cancel")
    out = tmp_path / "daemon.out"
    with smsgw.daemon("--interval", "600", out=out) as daemon:
        def retrying() -> bool:
            assert daemon.poll() is None, out.read_text(errors="replace")
            listed = smsgw.listed()["from_webapp"]
            return [(m["state"], m["retries"]) for m in listed] == [("UNSENT", 1)]
        wait_for(retrying, TIMEOUT, "the first try to fail")
        proc = smsgw("cancel", msg_id)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"{msg_id}: cancelled (the webapp hears FAILED)\n"
        assert "no daemon" not in proc.stderr
        # woken by the command: the webapp hears it now, not in 600 s
        wait_for(lambda: webapp.status_of(msg_id) == "FAILED", 20, "FAILED at the webapp")
    assert [u for u in webapp.updates() if u["id"] == msg_id][-1]["reason"] == "cancelled"
    [msg] = smsgw.listed()["from_webapp"]
    assert (msg["state"], msg["reason"]) == ("FAILED", "cancelled")
    assert len(fake_termux.calls("termux-sms-send")) == 1  # never tried again
    log = smsgw.log_file.read_text(encoding="utf-8")
    assert f"message {msg_id}: UNSENT -> FAILED (cancelled): by a person, to +254711000001" \
        in log
    again = smsgw("cancel", msg_id)
    assert again.returncode == ExitCode.WRONG_STATE
    assert again.stderr == f"{msg_id}: is FAILED: already finished; nothing to cancel\n"


def test_cancel_of_a_first_try_and_of_a_local_message(
        smsgw: Smsgw, fake_termux: FakeTermux, webapp: ReferenceWebapp) -> None:
    # One part a minute: the second message waits for its first try.
    smsgw.ok("config", "--url", webapp.url, "--max-per-minute", "1")
    webapp.queue("+254711000001", "first", id="w-first")
    webapp.queue("+254711000002", "second", id="w-second")
    smsgw.ok("run", "--once")
    local = smsgw.send("+254711000003", "local test")
    states = {m["id"]: (m["state"], m["retries"]) for m in smsgw.listed()["from_webapp"]}
    assert states["w-second"] == ("UNSENT", 0) and states[local][0] == "UNSENT"
    proc = smsgw("cancel", "w-second", local)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["w-second: cancelled (the webapp hears FAILED)",
                                        f"{local}: cancelled (a local message, never posted)"]
    assert "no daemon is running: the webapp hears it at the next `smsgw run`" in proc.stderr
    fake_termux.reset_calls()
    smsgw.ok("run", "--once")
    assert webapp.status_of("w-second") == "FAILED"
    assert [u["reason"] for u in webapp.updates() if u["id"] == "w-second"][-1] == "cancelled"
    assert local not in {u["id"] for u in webapp.updates()}
    assert [c["argv"][1] for c in fake_termux.calls("termux-sms-send")] == []


def test_cancel_refused_once_handed_to_the_phone_or_finished(
        smsgw: Smsgw, fake_termux: FakeTermux, webapp: ReferenceWebapp) -> None:
    smsgw.ok("config", "--url", webapp.url)
    webapp.queue("+254711000001", "goes out", id="w-sent")
    # The phone's clock 7 s behind: its sent row has settled when the cycle reads it.
    fake_termux.set_mode(clock_offset=-7)
    smsgw.ok("run", "--once")
    fake_termux.set_mode(clock_offset=None, no_row=1)  # handed over, no record seen yet
    webapp.queue("+254711000002", "in flight", id="w-pending")
    smsgw.ok("run", "--once")
    states = {m["id"]: m["state"] for m in smsgw.listed()["from_webapp"]}
    assert states == {"w-sent": "SENT", "w-pending": "PENDING"}
    proc = smsgw("cancel", "w-pending")
    assert proc.returncode == ExitCode.WRONG_STATE
    assert proc.stderr == ("w-pending: is PENDING: already handed to the phone; it cannot be "
                           "called back\n")
    proc = smsgw("cancel", "w-sent")
    assert proc.returncode == ExitCode.WRONG_STATE
    assert proc.stderr == "w-sent: is SENT: already sent; nothing to cancel\n"
    assert {m["id"]: m["state"] for m in smsgw.listed()["from_webapp"]} == states
    proc = smsgw("cancel")
    # one line in the one error style (issue #13 item 9), pointing at the command's help
    assert proc.returncode == ExitCode.USAGE
    assert proc.stderr == "smsgw: error: missing argument 'IDS...' (see smsgw cancel --help)\n"


# id prefixes -------------------------------------------------------------------------------
def test_unique_prefixes_ambiguous_and_unknown(smsgw: Smsgw, fake_termux: FakeTermux,
                                               webapp: ReferenceWebapp) -> None:
    smsgw.ok("config", "--url", webapp.url)
    webapp.queue("12", "not a number", id="abc-111")  # FAILED, archived by the run
    webapp.queue("12", "not a number", id="abc-222")
    webapp.queue("12", "not a number", id="abd-333")
    smsgw.ok("run", "--once")
    local = smsgw.send("+254711000003", "local test")
    assert smsgw.ids("--state", "FAILED")[0] == ["abc-111", "abc-222", "abd-333"]

    proc = smsgw("retry", "abc")
    assert proc.returncode == ExitCode.NOT_FOUND
    assert proc.stderr == ("abc: ambiguous id prefix, matches 2 messages: abc-111, abc-222; "
                           "give more of the id\n")
    for command in ("retry", "cancel"):
        proc = smsgw(command, "nothing-like-it")
        assert proc.returncode == ExitCode.NOT_FOUND
        assert proc.stderr == "nothing-like-it: no such message (see smsgw messages)\n"

    proc = smsgw("retry", "abd", "abc-2")  # unique prefixes of archived messages
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["abd-333: queued again", "abc-222: queued again"]
    assert smsgw.ids("--state", "UNSENT")[0] == [local, "abd-333", "abc-222"]  # by arrival

    proc = smsgw("cancel", local[:12])  # "local-" and a few characters of the uuid
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{local}: cancelled (a local message, never posted)\n"
    proc = smsgw("cancel", "ab")  # active and archived candidates alike
    assert proc.returncode == ExitCode.NOT_FOUND
    assert "ab: ambiguous id prefix, matches 3 messages: abc-111, abc-222, abd-333;" \
        in proc.stderr

    # An exact id wins over the ids it is a prefix of.
    webapp.queue("12", "x", id="abc-2222")
    smsgw.ok("run", "--once")
    proc = smsgw("cancel", "abc-222")
    assert proc.returncode == ExitCode.WRONG_STATE  # abc-222 itself: FAILED again by then
    assert proc.stderr.startswith("abc-222: is FAILED")


# completion --------------------------------------------------------------------------------
def test_completion_of_ids_and_states(smsgw: Smsgw, fake_termux: FakeTermux,
                                      webapp: ReferenceWebapp) -> None:
    assert smsgw.complete("cancel", "") == []  # no state yet: nothing, and nothing created
    assert not smsgw.state_file.exists()
    assert smsgw.complete("messages", "--state", "f") == [("plain", "FAILED"),
                                                          ("plain", "FORWARDED")]
    smsgw.ok("config", "--url", webapp.url)
    webapp.queue("12", "not a number", id="bad-1")
    webapp.queue("12", "not a number", id="bad-2")
    smsgw.ok("run", "--once")  # FAILED and archived
    local = smsgw.send("+254711000003", "local test")
    assert smsgw.complete("retry", "") == [("plain", "bad-1"), ("plain", "bad-2")]
    assert smsgw.complete("retry", "bad-2") == [("plain", "bad-2")]
    assert smsgw.complete("cancel", "") == [("plain", local)]
    assert smsgw.complete("cancel", "bad") == []
    assert smsgw.complete("messages", "--id", "") == [("plain", "bad-1"), ("plain", "bad-2"),
                                                      ("plain", local)]
    smsgw.state_file.write_text("{damaged", encoding="utf-8")
    assert smsgw.complete("cancel", "") == []


def test_archive_prefix_lookups_with_ids_json_escapes(tmp_path: Path) -> None:
    """Ids JSON writes escaped (non-ASCII, quotes, backslashes) are found whole, by prefix,
    and by the quick reader completion uses."""
    from smsgw.store import Store

    store = Store(tmp_path / "state")
    now = datetime.now(timezone.utc)
    ids = ["é-1", 'q"1', "back\\slash", "plain-1", "plain-2"]
    store.archive.append(now, [("out", {"id": i, "state": "FAILED", "content": f"text {i}"})
                               for i in ids])
    store.archive.append(now, [("in", {"id": "in-1", "from_": "+1", "state": "FORWARDED"})])
    for i in ids:
        assert [r["id"] for r in store.archive.matching("out", i)] == [i]
        assert [r["id"] for r in store.archive.matching("out", i[:2])] == (
            ["plain-1", "plain-2"] if i.startswith("plain") else [i])
    assert store.archive.matching("in", "in") == [{"id": "in-1", "from_": "+1",
                                                   "state": "FORWARDED"}]
    states = store.archive.id_states()
    assert states == {**{("out", i): "FAILED" for i in ids}, ("in", "in-1"): "FORWARDED"}
    assert store.archive.id_states("é") == {("out", "é-1"): "FAILED"}
    store.archive.revive(now, Ref("plain-2"))
    assert [r["id"] for r in store.archive.matching("out", "plain")] == ["plain-1"]
    assert ("out", "plain-2") not in store.archive.id_states("plain")
