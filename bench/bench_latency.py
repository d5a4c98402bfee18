"""Figure 5: latency of an incoming SMS to the webapp, and of a queued message to the phone.

Real `smsgw run` daemons over the fake termux-* (every call sleeps LATENCY s) and the
reference webapp in its own process:
- `--interval 600` with `smsgw hook`, then with the Termux:Tasker script (termux/tasker/
  smsgw-sms-received under sh: a signal, no Python start), run right after each SMS arrives
  (as Termux:Tasker does): from the arrival to the webapp having it;
- `--interval 5` without the hook: SMS arriving at random moments, and in the worst case
  (just after a cycle read the inbox); messages queued at the webapp at random moments and
  just after a POST, until termux-sms-send is called (the fake logs each call's start).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from benchlib import (
    LATENCY,
    REPO,
    FakeTermux,
    Output,
    SmsgwHome,
    WebappProcess,
    bench_main,
    distribution,
    median,
    say,
    wait_until,
)

INTERVAL = 5
TASKER_SCRIPT = REPO / "termux" / "tasker" / "smsgw-sms-received"
SH = shutil.which("dash") or "sh"  # Termux's sh is dash
LIST = "termux-sms-list"
SEND = "termux-sms-send"


def inbox_reads(fake: FakeTermux) -> int:
    return sum(1 for c in fake.calls(LIST) if "inbox" in c["argv"])


def start_daemon(work: Path, interval: int) -> tuple[FakeTermux, SmsgwHome, WebappProcess,
                                                       Any]:
    fake = FakeTermux(work / "phone")
    fake.set_mode(latency=LATENCY)
    home = SmsgwHome(work / "home", fake)
    webapp = WebappProcess()
    home.write_config(url=webapp.url)
    proc = home.popen("run", "--interval", str(interval))
    try:
        # The first cycle: probe, inbox position, one POST.
        wait_until(lambda: webapp.posts() >= 1, timeout=60, what="the daemon's first POST")
    except BaseException:
        home.stop(proc)
        webapp.stop()
        raise
    time.sleep(0.5)
    return fake, home, webapp, proc


def received(webapp: WebappProcess) -> int:
    return len(webapp.state()["received"])


def run_hook(home: SmsgwHome, shell: bool) -> subprocess.CompletedProcess[str]:
    """`smsgw hook`, or the Tasker script under sh."""
    if not shell:
        return home.run("hook", timeout=30)
    return subprocess.run([SH, str(TASKER_SCRIPT)], env=home.env, capture_output=True,
                          text=True, timeout=30)


def hook_latency(work: Path, samples: int, shell: bool = False) -> dict[str, Any]:
    fake, home, webapp, proc = start_daemon(work, 600)
    lat, hook_times = [], []
    try:
        for i in range(samples):
            n0 = received(webapp)
            t0 = time.time()
            fake.receive("+254700000100", f"hook sample {i}")
            h0 = time.perf_counter()
            done = run_hook(home, shell)
            hook_times.append(time.perf_counter() - h0)
            if done.returncode != 0 or (shell and not done.stdout.startswith("woke smsgw")):
                raise RuntimeError(f"the hook failed: {done.stdout.strip()} "
                                   f"{done.stderr.strip()}")
            wait_until(lambda n0=n0: received(webapp) > n0, timeout=30, poll=0.01,
                       what="the SMS at the webapp")
            lat.append(time.time() - t0)
            time.sleep(0.7)  # the woken cycle ends; the next is due in 600 s
    finally:
        home.stop(proc)
        webapp.stop()
    return {"latency": lat, "hook_seconds": hook_times}


def interval_latency(work: Path, samples: int, worst: int, seed: int = 5) -> dict[str, Any]:
    rng = random.Random(seed)
    fake, home, webapp, proc = start_daemon(work, INTERVAL)
    res: dict[str, list[float]] = {"in_random": [], "in_worst": [], "out_random": [],
                                   "out_worst": []}
    try:
        def incoming(i: int, after_read: bool) -> float:
            if after_read:
                reads = inbox_reads(fake)
                wait_until(lambda: inbox_reads(fake) > reads, timeout=3 * INTERVAL, poll=0.01,
                           what="an inbox read")
                time.sleep(LATENCY + 0.15)  # that read's query has run
            n0 = received(webapp)
            t0 = time.time()
            fake.receive("+254700000200", f"poll sample {i}")
            wait_until(lambda: received(webapp) > n0, timeout=4 * INTERVAL, poll=0.01,
                       what="the SMS at the webapp")
            return time.time() - t0

        def outgoing(i: int, after_post: bool) -> float:
            if after_post:
                posts = webapp.posts()
                wait_until(lambda: webapp.posts() > posts, timeout=3 * INTERVAL, poll=0.005,
                           what="a POST")
            sends = fake.call_count(SEND)
            t0 = time.time()
            webapp.queue("+254700000300", f"latency sample {i}", id=f"lat-{i}-{after_post}")
            wait_until(lambda: fake.call_count(SEND) > sends, timeout=4 * INTERVAL, poll=0.01,
                       what="termux-sms-send")
            return float(fake.calls(SEND)[sends]["time"]) - t0

        for i in range(samples):
            time.sleep(rng.uniform(0, INTERVAL))
            res["in_random"].append(incoming(i, False))
        for i in range(worst):
            res["in_worst"].append(incoming(100 + i, True))
        for i in range(samples):
            time.sleep(rng.uniform(0, INTERVAL))
            res["out_random"].append(outgoing(i, False))
        for i in range(worst):
            res["out_worst"].append(outgoing(100 + i, True))
    finally:
        home.stop(proc)
        webapp.stop()
    return res


def dist_note(values: list[float]) -> str:
    d = distribution(values)
    return (f"n={d['n']}: min {d['min']:.2f}, median {d['median']:.2f}, p90 {d['p90']:.2f}, "
            f"max {d['max']:.2f} s")


def run(quick: bool, work: Path) -> Output:
    out = Output("latency")
    n_hook = 3 if quick else 10
    say(f"5. `smsgw run --interval 600` + `smsgw hook`: {n_hook} SMS (fake latency {LATENCY} s)")
    h = hook_latency(work / "hook", n_hook)
    out.data["hook"] = h
    worst = max(h["latency"])
    out.add("5.1", "latency: SMS -> webapp with `smsgw hook` (600 s interval)", worst, "s",
            "<= 2", worst <= 2, note=dist_note(h["latency"]))
    out.add("5.2", "latency: the `smsgw hook` command itself", median(h["hook_seconds"]), "s",
            "(info)", None, note="median; Python start-up, import, signal")
    say(f"5. the same with the Tasker script under {SH} (a signal, no Python start)")
    t = hook_latency(work / "shell-hook", n_hook, shell=True)
    out.data["shell_hook"] = t
    worst = max(t["latency"])
    out.add("5.7", "latency: SMS -> webapp with the Tasker script (600 s interval)", worst, "s",
            "<= 2", worst <= 2, note=dist_note(t["latency"]))
    out.add("5.8", "latency: the Tasker script itself (sh, signal)", median(t["hook_seconds"]),
            "s", "(info)", None, note="median; sed, /proc check, kill -USR1")

    samples, worst_n = (3, 1) if quick else (12, 3)
    say(f"5. `smsgw run --interval {INTERVAL}` without hook: {samples} random + {worst_n} "
        "worst-case samples each way")
    r = interval_latency(work / "poll", samples, worst_n)
    out.data["interval"] = r
    for key, name, label in (
            ("5.3", "in_random", f"SMS -> webapp, no hook, random arrival ({INTERVAL} s)"),
            ("5.4", "in_worst", "SMS -> webapp, no hook, just after an inbox read"),
            ("5.5", "out_random", "queued at webapp -> termux-sms-send, random"),
            ("5.6", "out_worst", "queued at webapp -> termux-sms-send, just after a POST")):
        v = r[name]
        out.add(key, f"latency: {label}", max(v), "s", f"<= {INTERVAL}", max(v) <= INTERVAL,
                note=dist_note(v))
    return out


if __name__ == "__main__":
    bench_main("latency", run)
