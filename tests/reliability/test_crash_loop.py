"""Crash loop: the real `smsgw run`, SIGKILLed at random moments, keeps its promises.

The set-up is a user's, with only the phone faked: the reference webapp on 127.0.0.1 (in
this process), the fake termux-* executables on PATH with a small latency (so kills land
inside Termux:API calls too), and `smsgw run` as a subprocess in its own session. The loop
starts the daemon, lets it work for a random 0.05-1.5 s and SIGKILLs it, many times; now and
then the Termux:API calls it left running are killed too (the phone side died as well).
Outgoing messages are queued at the webapp and incoming SMS arrive on the phone in waves
while this goes on. A last daemon then runs until everything settled, and every message is
offered again by the webapp to prove that a known id is never sent twice.

Invariants, each asserted (all violations are listed together at the end):
1. no message is handed to termux-sms-send twice (the fakes' call log; every message has
   its own recipient number), nor recorded twice by the phone, nor ever again after the
   webapp offers it again;
2. no incoming SMS is lost, and each one reaches the webapp under a single id (the same id
   posted again is allowed by the protocol: counted, not failed);
3. every outgoing message ends at the webapp as SENT (with a row on the phone) or FAILED with
   a reason; here the only legitimate reason is the unknown outcome of an interrupted send;
4. after every kill, state.json is valid JSON, `smsgw status --json` works and reports the
   daemon down (its lock died with it), and the next daemon starts at once;
5. at the end the gateway's queues are empty and its archive keeps every message id with
   the final status the webapp was told.

test_crash_mid_archive_append_forgets_no_id replays one crash deterministically: a daemon
killed while its write to the archive is half done.

Figures are printed (run with -s) and written to crash-loop-NAME.json in the test's tmp dir.
SMSGW_CRASH_SEED=N repeats the same random choices (timings still differ from run to run).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from fakes import FakeTermux

from smsgw.gateway import UNKNOWN_OUTCOME
from smsgw.store import Archive
from smsgw.testserver import ReferenceWebapp

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]
SMSGW = [sys.executable, "-c", "from smsgw.cli import main; main()"]
FINAL = ("SENT", "FAILED")
CONFIRM_TIMEOUT = 5  # seconds: so interrupted sends without a phone record resolve in the test
LATENCY = (0.01, 0.05)  # seconds each fake termux-* call sleeps
ALIVE = (0.05, 1.5)  # seconds a daemon lives before its SIGKILL
CHILD_KILL_ODDS = 0.3  # share of kills that also kill the Termux:API calls left running
DEATH_LIMIT = 10  # seconds: a SIGKILLed daemon is reaped within this
FIRST_CYCLE_LIMIT = 60  # seconds for the first daemon to finish its first exchange
SETTLE_LIMIT = 90  # seconds for the last daemon to settle everything
REOFFER_LIMIT = 45  # seconds for the webapp to get a status for every message offered again
STOP_LIMIT = 30  # seconds for the last daemon to stop on SIGTERM
COMMAND_LIMIT = 60  # seconds for a one-shot smsgw command (only to prove it did not hang)
ROW_DELAY_OK = 2.0  # seconds: a row this soon after its send call must be matched in time


@dataclass(frozen=True)
class Workload:
    """One crash loop: message counts, kills, and how many outgoing are queued up front."""

    name: str
    outgoing: int
    incoming: int
    kills: int
    upfront: int


A = Workload("A", outgoing=200, incoming=0, kills=50, upfront=200)
B = Workload("B", outgoing=300, incoming=300, kills=100, upfront=150)


def spread(total: int, slots: int) -> list[int]:
    """`total` split over `slots` as evenly as possible."""
    return [total // slots + (1 if i < total % slots else 0) for i in range(slots)]


def termux_alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) fake termux-* process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X") and (
        b"/fakes/bin/termux-" in cmdline)


@dataclass
class Figures:
    """What the crash loop did and found; written as JSON and printed."""

    workload: str
    seed: int
    kills: int = 0
    kills_also_killing_calls: int = 0
    kills_during_termux_call: int = 0
    kills_during_send: int = 0
    daemon_starts: int = 0
    messages_out: int = 0
    messages_in: int = 0
    send_calls: int = 0
    send_calls_after_reoffer: int = 0
    phone_rows: int = 0
    send_calls_without_row: int = 0
    messages_without_send_call: int = 0
    duplicate_sends: dict[str, int] = field(default_factory=dict)
    duplicate_rows: dict[str, int] = field(default_factory=dict)
    lost_incoming: list[str] = field(default_factory=list)
    incoming_under_several_ids: dict[str, int] = field(default_factory=dict)
    duplicate_incoming_posts: int = 0
    final_statuses: dict[str, int] = field(default_factory=dict)
    not_final: list[str] = field(default_factory=list)
    state_checks: int = 0
    leftover_temp_files: int = 0
    seconds_kill_loop: float = 0.0
    seconds_settle: float = 0.0
    seconds_reoffer: float = 0.0
    seconds_total: float = 0.0
    failures: list[str] = field(default_factory=list)


class CrashLoop:
    """The webapp, the fake phone, and the daemons of one workload."""

    def __init__(self, tmp: Path, workload: Workload, seed: int) -> None:
        self.tmp = tmp
        self.w = workload
        self.rng = random.Random(seed)
        self.fig = Figures(workload.name, seed)
        self.home = tmp / "smsgw-home"
        self.fake = FakeTermux(tmp / "phone")
        user_home = tmp / "user-home"
        user_home.mkdir()
        env = {k: v for k, v in self.fake.env.items()
               if not k.startswith(("SMSGW_", "XDG_")) and k != "PYTHONPATH"
               and not k.lower().endswith("_proxy")}
        env.update(SMSGW_HOME=str(self.home), HOME=str(user_home), PYTHONPATH=str(REPO),
                   PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1,localhost")
        self.env = env
        self.webapp = ReferenceWebapp("127.0.0.1", 0)
        self.daemon_log: BinaryIO = open(tmp / "daemons.log", "ab")  # noqa: SIM115
        self.daemon: subprocess.Popen[bytes] | None = None
        # message id -> (recipient number, text); incoming body -> sender
        self.out: dict[str, tuple[str, str]] = {}
        self.by_number: dict[str, str] = {}
        self.injected: dict[str, str] = {}
        self.out_waves = [workload.upfront] + spread(workload.outgoing - workload.upfront,
                                                     max(1, workload.kills * 3 // 5))
        self.in_waves = spread(workload.incoming, max(1, workload.kills * 3 // 5))

    # helpers ----------------------------------------------------------------------------
    def fail(self, text: str) -> None:
        self.fig.failures.append(text)

    def smsgw(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(SMSGW + list(args), cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=COMMAND_LIMIT, stdin=subprocess.DEVNULL)

    def queue_outgoing(self, count: int) -> None:
        for _ in range(count):
            i = len(self.out)
            msg_id = f"crash-{self.w.name}-{i:04d}"
            number = f"+2547{i:08d}"
            text = f"crash loop {self.w.name}: outgoing #{i} ({msg_id})"
            self.out[msg_id] = (number, text)
            self.by_number[number] = msg_id
            self.webapp.queue(number, text, id=msg_id)

    def inject_incoming(self, count: int) -> None:
        """SMS arrive on the phone: one through `fake-termux receive`, the rest in a burst."""
        if count <= 0:
            return
        batch = []
        for _ in range(count):
            k = len(self.injected) + len(batch)
            batch.append((f"+2541{k:08d}", f"crash loop {self.w.name}: incoming #{k}"))
        sender, body = batch.pop(0)
        proc = subprocess.run(["fake-termux", "receive", sender, body], env=self.env,
                              capture_output=True, text=True, timeout=COMMAND_LIMIT)
        assert proc.returncode == 0, proc.stderr
        self.injected[body] = sender
        if batch:
            self.fake.receive_many(batch)
            self.injected.update({b: s for s, b in batch})

    def start_daemon(self) -> subprocess.Popen[bytes]:
        self.daemon_log.write(f"\n=== daemon start {self.fig.daemon_starts} at "
                              f"{datetime.now().isoformat()} ===\n".encode())
        self.daemon_log.flush()
        self.daemon = subprocess.Popen(
            SMSGW + ["run", "--interval", "1"], cwd=REPO, env=self.env,
            stdin=subprocess.DEVNULL, stdout=self.daemon_log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.fig.daemon_starts += 1
        return self.daemon

    def live_calls(self, within: float = 30.0) -> list[tuple[int, str]]:
        """(pid, name) of fake termux-* calls started lately that still run."""
        start = time.time() - within
        return [(c["pid"], c["name"]) for c in self.fake.calls()
                if c["time"] >= start and c["name"].startswith("termux-")
                and termux_alive(c["pid"])]

    def kill_daemon(self, proc: subprocess.Popen[bytes], kill_calls: bool) -> None:
        """SIGKILL the daemon's process group; maybe its orphaned Termux:API calls too."""
        code = proc.poll()
        if code is not None:
            self.fail(f"daemon start {self.fig.daemon_starts - 1} exited by itself with "
                      f"status {code} before its SIGKILL (see daemons.log)")
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            self.fig.kills += 1
        live = self.live_calls()
        if live:
            self.fig.kills_during_termux_call += 1
            if any(name == "termux-sms-send" for _, name in live):
                self.fig.kills_during_send += 1
        if kill_calls and live:
            self.fig.kills_also_killing_calls += 1
            for pid, _ in live:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        try:
            proc.wait(timeout=DEATH_LIMIT)
        except subprocess.TimeoutExpired:
            self.fail(f"daemon pid {proc.pid} still alive {DEATH_LIMIT} s after SIGKILL")
        self.daemon = None

    def check_state(self, when: str) -> None:
        """Invariant 4: the state loads, and status works and sees no daemon."""
        self.fig.state_checks += 1
        path = self.home / "state" / "state.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self.fail(f"{when}: state.json does not load: {exc}")
        else:
            if not isinstance(data, dict) or "meta" not in data:
                self.fail(f"{when}: state.json is not a state: {str(data)[:200]}")
        proc = self.smsgw("status", "--json")
        try:
            status = json.loads(proc.stdout)
        except ValueError:
            self.fail(f"{when}: status --json exit {proc.returncode}, no JSON: "
                      f"{proc.stdout[-300:]!r} {proc.stderr[-300:]!r}")
            return
        if proc.returncode != 3 or status["daemon"]["running"]:
            self.fail(f"{when}: status --json says exit {proc.returncode}, daemon "
                      f"{status['daemon']} (expected 3: the lock died with the daemon)")

    def wait_for(self, cond: Callable[[], bool], limit: float) -> bool:
        """Poll `cond` until true or `limit` seconds; fails early if the daemon died."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if cond():
                return True
            if self.daemon is not None and self.daemon.poll() is not None:
                self.fail(f"daemon exited by itself with status {self.daemon.returncode}")
                return False
            time.sleep(0.2)
        return cond()

    # the run ----------------------------------------------------------------------------
    def setup(self) -> None:
        self.webapp.start()
        proc = self.smsgw("config", "--url", self.webapp.url, "--no-check",
                          "--max-per-minute", "10000", "--confirm-timeout",
                          f"{CONFIRM_TIMEOUT}s")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self.queue_outgoing(self.out_waves[0])

    def kill_loop(self) -> None:
        for k in range(self.w.kills):
            self.fake.set_mode(latency=round(self.rng.uniform(*LATENCY), 3))
            proc = self.start_daemon()
            # The first start only notes where the inbox is: SMS must arrive after it. A
            # status at the webapp means the inbox was read and the exchange went on.
            if k == 0 and not self.wait_for(lambda: bool(self.webapp.statuses()),
                                            FIRST_CYCLE_LIMIT):
                self.fail("the first daemon never reported a status to the webapp")
                self.kill_daemon(proc, False)
                return
            born = time.monotonic()
            alive = self.rng.uniform(*ALIVE)
            time.sleep(self.rng.uniform(0, alive))
            # Waves arrive while the daemon runs, at a random moment of its life.
            if k + 1 < len(self.out_waves):
                self.queue_outgoing(self.out_waves[k + 1])
            if k < len(self.in_waves):
                self.inject_incoming(self.in_waves[k])
            time.sleep(max(0.0, born + alive - time.monotonic()))
            self.kill_daemon(proc, self.rng.random() < CHILD_KILL_ODDS)
            self.check_state(f"after kill {k + 1}")
        # Waves the loop had no time for (only when kills < waves).
        for count in self.out_waves[self.w.kills + 1:]:
            self.queue_outgoing(count)
        for count in self.in_waves[self.w.kills:]:
            self.inject_incoming(count)

    def all_final(self) -> bool:
        statuses = self.webapp.statuses()
        return all(statuses.get(i) and statuses[i][-1] in FINAL for i in self.out)

    def all_received(self) -> bool:
        got = {m.get("content") for m in self.webapp.received()}
        return set(self.injected) <= got

    def settle(self) -> None:
        self.fake.set_mode(latency=LATENCY[0])
        proc = self.start_daemon()

        def running() -> bool:
            status = self.status()
            return status is not None and status["daemon"]["running"] and (
                status["daemon"]["pid"] == proc.pid)

        # The lock is free and the stale pid file of the last killed daemon gets replaced.
        if not self.wait_for(running, FIRST_CYCLE_LIMIT):
            self.fail(f"status --json never showed the last daemon (pid {proc.pid}) running: "
                      f"{(self.status() or {}).get('daemon')}")
        if not self.wait_for(lambda: self.all_final() and self.all_received(), SETTLE_LIMIT):
            self.fail(f"not settled within {SETTLE_LIMIT} s")

    def status(self) -> dict[str, Any] | None:
        """`smsgw status --json` (it works beside a running daemon)."""
        proc = self.smsgw("status", "--json")
        try:
            return dict(json.loads(proc.stdout))
        except (ValueError, TypeError):
            self.fail(f"status --json: exit {proc.returncode}, {proc.stdout[-300:]!r} "
                      f"{proc.stderr[-300:]!r}")
            return None

    def queues(self) -> dict[str, Any] | None:
        status = self.status()
        return None if status is None else dict(status["queues"])

    def queues_empty(self) -> bool:
        queues = self.queues()
        return queues is not None and not any(queues["outgoing"].values()) and not (
            queues["incoming"].get("WAITING") or queues["updates_queued"])

    def reoffer(self) -> None:
        """The webapp offers every message again: each gets its status again, none is sent."""
        self.fig.send_calls = len(self.fake.calls("termux-sms-send"))
        before = {i: len(v) for i, v in self.webapp.statuses().items()}
        for msg_id in self.out:
            self.webapp.offer_again(msg_id)

        def answered() -> bool:
            now = self.webapp.statuses()
            return all(len(now.get(i, [])) > before.get(i, 0) for i in self.out)

        if not self.wait_for(answered, REOFFER_LIMIT):
            self.fail(f"messages offered again got no status within {REOFFER_LIMIT} s")
        # Each offer queued the status again: let the daemon post what is still queued.
        if not self.wait_for(self.queues_empty, REOFFER_LIMIT):
            self.fail(f"updates still queued {REOFFER_LIMIT} s after the re-offer")
        self.fig.send_calls_after_reoffer = (
            len(self.fake.calls("termux-sms-send")) - self.fig.send_calls)

    def stop(self) -> None:
        proc = self.daemon
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_LIMIT)
        except subprocess.TimeoutExpired:
            self.fail(f"the last daemon did not stop within {STOP_LIMIT} s of SIGTERM")
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait(timeout=DEATH_LIMIT)
        if code != 0:
            self.fail(f"the last daemon ended with status {code} after SIGTERM")
        self.daemon = None

    def cleanup(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            os.killpg(self.daemon.pid, signal.SIGKILL)
            self.daemon.wait(timeout=DEATH_LIMIT)
        for pid, _ in self.live_calls(within=3600):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.webapp.stop()
        self.daemon_log.close()

    # the verdict ------------------------------------------------------------------------
    def judge(self) -> None:
        fig = self.fig
        fig.messages_out = len(self.out)
        fig.messages_in = len(self.injected)

        # 1. no message handed to termux-sms-send twice, nor recorded twice by the phone
        calls = self.fake.calls("termux-sms-send")
        per_id: Counter[str] = Counter()
        call_time: dict[str, float] = {}
        for call in calls:
            argv = call["argv"]
            number = argv[argv.index("-n") + 1] if "-n" in argv else None
            msg_id = self.by_number.get(number or "")
            if msg_id is None:
                self.fail(f"termux-sms-send called for no queued message: {argv}")
                continue
            per_id[msg_id] += 1
            call_time.setdefault(msg_id, call["time"])
        fig.duplicate_sends = {i: n for i, n in sorted(per_id.items()) if n > 1}
        rows = [r for r in self.fake.rows() if r["type"] in (2, 5)]
        fig.phone_rows = len(rows)
        texts = {text: i for i, (_, text) in self.out.items()}
        row_of: dict[str, dict[str, Any]] = {}
        per_row: Counter[str] = Counter()
        for row in rows:
            msg_id = texts.get(row["body"])
            if msg_id is None or self.out[msg_id][0] != row["address"]:
                self.fail(f"the phone recorded an SMS no message asked for: {row}")
                continue
            per_row[msg_id] += 1
            row_of.setdefault(msg_id, row)
        fig.duplicate_rows = {i: n for i, n in sorted(per_row.items()) if n > 1}
        fig.send_calls_without_row = sum(1 for i in per_id if i not in row_of)
        fig.messages_without_send_call = sum(1 for i in self.out if i not in per_id)
        if fig.duplicate_sends:
            self.fail(f"{len(fig.duplicate_sends)} messages handed to termux-sms-send more "
                      f"than once: {dict(list(fig.duplicate_sends.items())[:10])}")
        if fig.duplicate_rows:
            self.fail(f"{len(fig.duplicate_rows)} messages recorded more than once by the "
                      f"phone: {dict(list(fig.duplicate_rows.items())[:10])}")
        if fig.send_calls_after_reoffer:
            self.fail(f"{fig.send_calls_after_reoffer} termux-sms-send calls after the webapp "
                      "offered known messages again")

        # 2. no incoming SMS lost; each one under a single id
        received = self.webapp.received()
        ids_of: dict[str, set[str]] = {}
        for msg in received:
            ids_of.setdefault(msg.get("content"), set()).add(msg.get("id"))
            if msg.get("content") not in self.injected:
                self.fail(f"the webapp received an SMS nobody sent: {msg}")
            elif msg.get("from") != self.injected[msg["content"]]:
                self.fail(f"incoming SMS with the wrong sender: {msg}")
        fig.lost_incoming = sorted(b for b in self.injected if b not in ids_of)
        fig.incoming_under_several_ids = {b: len(v) for b, v in sorted(ids_of.items())
                                          if len(v) > 1}
        snapshot = self.webapp.snapshot()
        fig.duplicate_incoming_posts = snapshot["counters"]["duplicate_messages"]
        if fig.lost_incoming:
            self.fail(f"{len(fig.lost_incoming)} incoming SMS never reached the webapp: "
                      f"{fig.lost_incoming[:10]}")
        if fig.incoming_under_several_ids:
            self.fail(f"{len(fig.incoming_under_several_ids)} incoming SMS reached the webapp "
                      "under several ids (an SMS gets its id once): "
                      f"{dict(list(fig.incoming_under_several_ids.items())[:10])}")

        # 3. every outgoing message ends SENT (recorded by the phone) or FAILED with a reason
        statuses = self.webapp.statuses()
        reasons: dict[str, str | None] = {}
        for update in self.webapp.updates():
            if update.get("status") == "FAILED":
                reasons[update["id"]] = update.get("reason")
        histogram: Counter[str] = Counter()
        for msg_id in self.out:
            seen = statuses.get(msg_id, [])
            last = seen[-1] if seen else "none"
            if last not in FINAL:
                fig.not_final.append(msg_id)
            if last == "FAILED":
                histogram[f"FAILED: {reasons.get(msg_id)}"] += 1
            else:
                histogram[last] += 1
            if "SENT" in seen and "FAILED" in seen:
                self.fail(f"{msg_id} reported both SENT and FAILED: {seen}")
            if last == "SENT" and msg_id not in row_of:
                self.fail(f"{msg_id} reported SENT but the phone has no record of it")
            if last == "FAILED":
                reason = reasons.get(msg_id)
                if not reason:
                    self.fail(f"{msg_id} FAILED without a reason")
                elif reason != UNKNOWN_OUTCOME:
                    self.fail(f"{msg_id} FAILED for {reason!r}, but no send can fail here")
                row = row_of.get(msg_id)
                if row is not None and msg_id in call_time and (
                        row["date"] / 1000 - call_time[msg_id] < ROW_DELAY_OK):
                    self.fail(f"{msg_id} FAILED ({reason}) though the phone recorded it "
                              f"{row['date'] / 1000 - call_time[msg_id]:.1f} s after the call")
        fig.final_statuses = dict(sorted(histogram.items()))
        if fig.not_final:
            self.fail(f"{len(fig.not_final)} messages without a final status at the webapp: "
                      f"{fig.not_final[:10]}")
        if snapshot["problems"]:
            self.fail(f"the webapp saw protocol problems: {snapshot['problems'][:10]}")

        # settled: nothing left in the gateway's queues
        if not self.queues_empty():
            self.fail(f"not settled after the last daemon stopped: queues {self.queues()}")
        fig.leftover_temp_files = len(list((self.home / "state").glob(".*.tmp")))

        # What the gateway remembers of each message is what the webapp was told: the
        # archive keeps every id (a re-offer must never send it again) with its final state.
        archive = Archive(self.home / "state" / "archive")
        for msg_id in self.out:
            seen = statuses.get(msg_id) or ["none"]
            kept = archive.status_of(msg_id)
            if kept is None or kept[0] != seen[-1]:
                self.fail(f"{msg_id}: the archive keeps {kept}, the webapp was told {seen[-1]}")

    def report(self) -> Path:
        data = asdict(self.fig)
        path = self.tmp / f"crash-loop-{self.w.name}.json"
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        f = self.fig
        lines = [
            f"crash loop {f.workload} (seed {f.seed}): {f.kills} SIGKILLs "
            f"({f.kills_during_termux_call} with a termux call running, {f.kills_during_send} "
            f"during termux-sms-send, {f.kills_also_killing_calls} also killing the calls), "
            f"{f.daemon_starts} daemon starts",
            f"  messages out {f.messages_out}, in {f.messages_in}; send calls {f.send_calls} "
            f"(after the re-offer: {f.send_calls_after_reoffer}), phone rows {f.phone_rows}, "
            f"calls without a row {f.send_calls_without_row}, messages never handed over "
            f"{f.messages_without_send_call}",
            f"  duplicate sends {len(f.duplicate_sends)}, duplicate rows "
            f"{len(f.duplicate_rows)}, lost incoming {len(f.lost_incoming)}, incoming under "
            f"several ids {len(f.incoming_under_several_ids)}, same id posted again "
            f"{f.duplicate_incoming_posts}",
            f"  final statuses {f.final_statuses}; not final {len(f.not_final)}",
            f"  state checks {f.state_checks}, leftover temp files {f.leftover_temp_files}",
            f"  time: kill loop {f.seconds_kill_loop:.1f} s, settle {f.seconds_settle:.1f} s, "
            f"re-offer {f.seconds_reoffer:.1f} s, total {f.seconds_total:.1f} s",
            f"  failures: {len(f.failures)}; figures in {path}",
        ]
        print("\n" + "\n".join(lines))
        for failure in f.failures:
            print("  FAIL " + failure)
        return path


@pytest.mark.parametrize("workload", [A, B], ids=lambda w: w.name)
def test_crash_loop(workload: Workload, tmp_path: Path) -> None:
    seed = int(os.environ.get("SMSGW_CRASH_SEED") or random.randrange(2**32))
    loop = CrashLoop(tmp_path, workload, seed)
    started = time.monotonic()
    try:
        loop.setup()
        mark = time.monotonic()
        loop.kill_loop()
        loop.fig.seconds_kill_loop = time.monotonic() - mark
        mark = time.monotonic()
        loop.settle()
        loop.fig.seconds_settle = time.monotonic() - mark
        mark = time.monotonic()
        loop.reoffer()
        loop.fig.seconds_reoffer = time.monotonic() - mark
        loop.stop()
        loop.judge()
    finally:
        loop.cleanup()
        loop.fig.seconds_total = time.monotonic() - started
        loop.report()
    assert loop.fig.kills >= workload.kills
    assert not loop.fig.failures, "\n".join(loop.fig.failures)


# A crash inside the archive append ------------------------------------------------------
class Killed(BaseException):
    """The process died here (SIGKILL): nothing after this point runs."""


class _TearingOs:
    """`os` for smsgw.store.archive whose write() gets half its bytes to the file, then dies.

    That is what a SIGKILL (or a power cut) does to a large write: Linux checks for a
    fatal signal between pages and keeps what was copied so far.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def write(fd: int, data: bytes) -> int:
        os.write(fd, data[: len(data) // 2])
        raise Killed


def test_crash_mid_archive_append_forgets_no_id(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon killed while it appends a finished message to the archive; the next daemon
    archives it again. The id must stay known, so a re-offer is never sent a second time."""
    import smsgw.store.archive as store_module
    from smsgw.models import Offered, OutState, utcnow
    from smsgw.store import Batch, Store

    now = utcnow()
    offer = [(Offered(id="m1", to="+254700000001", content="hello"), None)]
    first = Store(tmp_path / "state")
    assert first.complete_exchange(Batch(), offer, now).new == ["m1"]
    with first.unit(now) as u:
        msg = u.get("m1")
        assert msg is not None
        for state in (OutState.SENDING, OutState.PENDING, OutState.SENT):
            u.transition(msg, state)
    monkeypatch.setattr(store_module, "os", _TearingOs())
    with pytest.raises(Killed):
        first.archive_finished(now)
    monkeypatch.setattr(store_module, "os", os)

    second = Store(tmp_path / "state")  # the next daemon
    assert second.archive_finished(now) == 1
    assert second.archive.status_of("m1") == ("SENT", None), (
        "the id of a SENT message is lost from the archive after a crash mid-append")
    result = second.complete_exchange(Batch(), offer, now)
    assert result.known == ["m1"] and result.new == [], (
        "a message the phone already sent was accepted as new: it would be sent twice")
