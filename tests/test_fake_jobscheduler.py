"""The fake termux-job-scheduler behaves as termux-api's script and JobSchedulerAPI do
(tests/fakes/README.md): what smsgw's installer and doctor rely on, and the unkind parts."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from fakes import FakeTermux

pytest_plugins = ["fakes.fixtures"]


def jobs_cmd(fake: FakeTermux, *args: str, timeout: float = 30,
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["termux-job-scheduler", *args], env=fake.env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "job.sh"
    path.write_text("#!/bin/sh\n", encoding="utf-8")
    path.chmod(0o700)
    return path


def test_scheduling_an_id_again_replaces_its_job(fake_termux: FakeTermux, script: Path) -> None:
    assert jobs_cmd(fake_termux, "--pending").stdout == "No jobs found\n"
    done = jobs_cmd(fake_termux, "--job-id", "7", "--script", str(script), "--period-ms",
                    "900000", "--persisted", "true")
    assert done.returncode == 0
    first, pending = done.stdout.splitlines()
    assert first.startswith(f"Scheduling Job 7: {script}    (periodic: 900000ms) (persisted) "
                            "(battery not low) (network: ")
    assert first.endswith(" - response 1")
    assert pending.startswith(f"Pending Job 7: {script}    (periodic: 900000ms)")
    # Again, with the = form, a prefix and a shorter period (shown as Android's minimum).
    jobs_cmd(fake_termux, "--job-id=7", "-s", str(script), "--period-ms", "60000",
             "--pers", "true", "--battery-not-low", "false")
    jobs_cmd(fake_termux, "--job-id", "8", "--script", str(script))  # once, not periodic
    assert sorted(fake_termux.jobs()) == [7, 8]
    lines = jobs_cmd(fake_termux, "-p").stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"Pending Job 7: {script}    (periodic: 900000ms) (persisted) "
                               "(network: ")
    assert lines[1].startswith(f"Pending Job 8: {script}    (battery not low) (network: ")


def test_cancel(fake_termux: FakeTermux, script: Path) -> None:
    assert jobs_cmd(fake_termux, "--cancel").stdout == "Job id not passed\n"
    assert jobs_cmd(fake_termux, "--cancel", "--job-id", "3").stdout == "No job 3 found\n"
    jobs_cmd(fake_termux, "--job-id", "3", "--script", str(script))
    jobs_cmd(fake_termux, "--script", str(script))  # id 0
    out = jobs_cmd(fake_termux, "--cancel", "--job-id", "3").stdout
    assert out.startswith(f"Cancelling Job 3: {script}")
    assert list(fake_termux.jobs()) == [0]
    out = jobs_cmd(fake_termux, "--cancel-all").stdout
    assert out.startswith(f"Cancelling Job 0: {script}")
    assert fake_termux.jobs() == {}
    assert jobs_cmd(fake_termux, "--cancel-all").stdout == "No jobs found\n"


def test_the_app_checks_the_script(fake_termux: FakeTermux, script: Path) -> None:
    assert jobs_cmd(fake_termux, "--job-id", "1").stdout == "No script path given\n"
    assert jobs_cmd(fake_termux, "-s", "job.sh").stdout == "No such file: job.sh\n"  # cwd /
    script.chmod(0o600)
    assert jobs_cmd(fake_termux, "-s", str(script)).stdout == f"Cannot execute file: {script}\n"
    assert fake_termux.jobs() == {}


def test_argument_errors(fake_termux: FakeTermux) -> None:
    done = jobs_cmd(fake_termux, "--bogus")
    assert done.returncode == 1
    assert done.stderr == "termux-job-scheduler: unrecognized option '--bogus'\n"
    done = jobs_cmd(fake_termux, "--job-id")
    assert done.returncode == 1 and "requires an argument" in done.stderr
    done = jobs_cmd(fake_termux, "-p", "extra")
    assert (done.returncode, done.stdout) == (1, "termux-job-scheduler: too many arguments\n")


def test_a_job_id_am_refuses_hangs(fake_termux: FakeTermux, script: Path) -> None:
    proc = subprocess.Popen(["termux-job-scheduler", "--job-id", "seven", "-s", str(script)],
                            env=fake_termux.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.communicate(timeout=3)
    os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert b"NumberFormatException" in err
    assert fake_termux.jobs() == {}


def test_a_job_without_network_breaks_the_listing(fake_termux: FakeTermux,
                                                  script: Path) -> None:
    jobs_cmd(fake_termux, "--job-id", "1", "-s", str(script))
    done = jobs_cmd(fake_termux, "--job-id", "2", "-s", str(script), "--network", "none")
    assert (done.returncode, done.stdout) == (0, "")  # scheduled, but not describable
    assert sorted(fake_termux.jobs()) == [1, 2]
    assert jobs_cmd(fake_termux, "--pending").stdout == ""
    fake_termux.set_mode(android_sdk=27)  # before Android 9: no network in the line
    assert jobs_cmd(fake_termux, "--pending").stdout.splitlines()[1] == \
        f"Pending Job 2: {script}    (battery not low)"


def test_an_app_before_0_52_answers_as_it_did(fake_termux: FakeTermux, script: Path) -> None:
    # Termux:API 0.51 and older: a tab after the path, `No pending jobs`, and only the first
    # of the two answers to scheduling reaches the command.
    fake_termux.set_mode(app_version="0.51")
    assert jobs_cmd(fake_termux, "--pending").stdout == "No pending jobs\n"
    done = jobs_cmd(fake_termux, "--job-id", "7", "--script", str(script), "--period-ms",
                    "900000", "--persisted", "true")
    assert done.returncode == 0
    [line] = done.stdout.splitlines()
    assert line.startswith(f"Scheduling Job 7: {script}\t(periodic: 900000ms) (persisted) ")
    assert line.endswith(" - response 1")
    [pending] = jobs_cmd(fake_termux, "-p").stdout.splitlines()
    assert pending.startswith(f"Pending Job 7: {script}\t(periodic: 900000ms)")
    fake_termux.set_mode(app_version="0.52")
    assert jobs_cmd(fake_termux, "-p").stdout.startswith(f"Pending Job 7: {script}    ")
