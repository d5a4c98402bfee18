"""A bug in smsgw is an internal error: one line for the user, the traceback in the log,
never a webapp failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from smsgw import cli
from smsgw.config import Settings
from smsgw.gateway import Gateway
from smsgw.phone.simulated import SimulatedPhone
from smsgw.store import Store


def test_a_bug_in_a_command_is_one_line_and_its_traceback_goes_to_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("SMSGW_HOME", str(tmp_path))

    def broken(self: Store, now: object) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(Store, "summary", broken)  # a mock: a bug cannot be reached otherwise
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["status"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    [line] = err.strip().splitlines()
    assert line.startswith("smsgw: error: internal error (a bug in smsgw, please report it): "
                           "TypeError: a bug; the traceback is in ")
    log = (tmp_path / "smsgw.log").read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in log and "TypeError: a bug" in log


def test_a_bug_in_a_step_does_not_count_as_a_webapp_failure(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    class Webapp:
        posts = 0

        def exchange(self, messages: list, updates: list) -> list:
            Webapp.posts += 1
            return []

    store = Store(tmp_path / "state")
    gateway = Gateway(store, Webapp(), SimulatedPhone(), Settings())

    def broken(self: Gateway, report: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(Gateway, "send_due", broken)
    report = gateway.cycle()
    assert report.errors == []
    assert report.internal_errors == ["broken: KeyError: 'a bug'"]
    assert Webapp.posts == 1  # the other steps ran
    assert store.summary(gateway.clock())["webapp_failures"] == 0
