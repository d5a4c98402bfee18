"""Figure 1: send throughput, and the sending rate limit held and sustained.

Throughput: the Gateway in-process over the fake termux-* (every call sleeps LATENCY s, list
calls too) and the reference webapp in its own process, which has N messages queued; the
rate limit is set out of the way. The wall time runs from the first cycle that sees the
backlog to the return of the N-th termux-sms-send.

Rate limit: the Gateway with an injected clock, driven by the daemon's own
`Daemon._cycle_job` (cycle, then plan the next; its monotonic clock is the injected one),
over a simulated phone whose every call takes LATENCY s of that clock; then (full mode)
a real `smsgw run` at the default 30 parts/min for three minutes over the fakes.
"""

from __future__ import annotations

import cProfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from benchlib import (
    LATENCY,
    T0,
    FakeTermux,
    LatentPhone,
    Output,
    SimClock,
    SmsgwHome,
    TimedTermuxPhone,
    WebappProcess,
    bench_main,
    daemon_logging,
    fakes_in_process,
    max_in_window,
    mean_rate,
    profile_text,
    say,
)

import smsgw.daemon
from smsgw.config import Paths, Settings
from smsgw.daemon import Daemon
from smsgw.gateway import Gateway
from smsgw.store import Store
from smsgw.testserver import ReferenceWebapp
from smsgw.webapp import WebappClient

HIGH_RATE = 100_000
SEND = "termux-sms-send"
LIST = "termux-sms-list"


# throughput ------------------------------------------------------------------------------------
def throughput(work: Path, n: int, latency: float, profile: bool = False,
               confirm: bool = True) -> dict[str, Any]:
    """Hand `n` queued messages to termux-sms-send; the timings of every termux call."""
    fake = FakeTermux(work / "phone")
    fake.set_mode(latency=latency)
    with fakes_in_process(fake), WebappProcess() as webapp:
        daemon_logging(work, webapp.url)
        store = Store(work / "state")
        settings = Settings(url=webapp.url, max_parts_per_minute=HIGH_RATE)
        client = WebappClient(webapp.url)
        phone = TimedTermuxPhone(page_size=500)
        gateway = Gateway(store, client, phone, settings)
        gateway.cycle()  # a running daemon: the probe and the first inbox position are done
        phone.log.clear()
        fake.reset_calls()
        webapp.queue_many(n)
        prof = cProfile.Profile() if profile else None
        cycles: list[tuple[float, Any]] = []
        t0 = time.perf_counter()
        while phone.time_in(SEND)[0] < n and len(cycles) < 40:
            c0 = time.perf_counter()
            if prof:
                prof.enable()
            report = gateway.cycle()
            if prof:
                prof.disable()
            cycles.append((time.perf_counter() - c0, report))
        sends = [(s, e) for name, s, e in phone.log if name == SEND]
        if len(sends) < n:
            raise RuntimeError(f"only {len(sends)} of {n} messages were sent: "
                               f"{cycles[-1][1].errors if cycles else ''}")
        t_end = sends[n - 1][1]
        wall = t_end - t0
        first = cycles[0][1]
        out: dict[str, Any] = {
            "n": n, "latency": latency, "wall": wall,
            "calls": {name: phone.time_in(name, before=t_end)
                      for name in {c[0] for c in phone.log}},
            "first_cycle": {"seconds": cycles[0][0], "posts": first.posts,
                            "updates_posted": first.updates_posted, "handed": first.handed},
            "cycles_to_send": len(cycles),
        }
        rows = fake.rows("sent")
        bodies = Counter(r["body"] for r in rows)
        out["send_calls"] = fake.call_count(SEND)
        out["each_once"] = (len(bodies) == n and set(bodies.values()) == {1})
        if prof is not None:
            out["profile"] = profile_text(prof, f"sending {n} messages, latency {latency} s "
                                          "(per message in the last column)", per=n)
        if confirm:
            # The sent rows must settle (SETTLE = 5 s) before reconcile confirms them.
            time.sleep(5.5)
            confirm_cycles = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                mark = len(phone.log)
                c0 = time.perf_counter()
                report = gateway.cycle()
                spent = time.perf_counter() - c0
                in_calls = sum(e - s for _, s, e in phone.log[mark:])
                confirm_cycles.append({"seconds": spent, "excluding_calls": spent - in_calls,
                                       "confirmed": report.confirmed, "posts": report.posts})
                statuses = webapp.state()["statuses"]
                if sum(1 for v in statuses.values() if v and v[-1] == "SENT") >= n:
                    break
                time.sleep(0.5)
            state = webapp.state()
            out["confirm_cycles"] = confirm_cycles
            out["all_sent_reported"] = sum(
                1 for v in state["statuses"].values() if v and v[-1] == "SENT")
            out["updates_total"] = len(state["updates"])
            out["posts_total"] = state["counters"]["posts"]
        client.close()
    return out


# the rate limit on an injected clock ------------------------------------------------------------
class SimTime:
    """Stands in for the `time` module inside smsgw.daemon: its monotonic clock is the
    injected one, so the daemon measures a cycle's duration in simulated time."""

    def __init__(self, clock: SimClock) -> None:
        self._clock = clock

    def monotonic(self) -> float:
        return self._clock().timestamp()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def daemon_step(daemon: Daemon, clock: SimClock) -> Any:
    """One cycle as the daemon runs it (`Daemon._cycle_job`: the cycle, then the plan for
    the next one); the injected clock then moves to when the daemon planned it."""
    daemon._cycle_job()
    planned = daemon._job.next_run if daemon._job is not None else None
    if planned is not None:
        clock.advance(max(0.0, (planned - datetime.now()).total_seconds()))
    return daemon.last_report


def rate_sim(work: Path, rate: int, minutes: float) -> dict[str, Any]:
    """Send a backlog at `rate` parts/min for `minutes` simulated minutes, paced by the
    daemon's own planning; returns the send times (s since the start), cycles and POSTs."""
    clock = SimClock(T0)
    phone = LatentPhone(clock, LATENCY)
    app = ReferenceWebapp("127.0.0.1", 0)
    url = app.start()
    saved_time = getattr(smsgw.daemon, "time", None)
    if saved_time is not None:
        smsgw.daemon.time = SimTime(clock)  # type: ignore[assignment]
    try:
        store = Store(work / f"state-{rate}")
        client = WebappClient(url)
        gateway = Gateway(store, client, phone, Settings(url=url, max_parts_per_minute=rate),
                          clock=clock)
        daemon = Daemon(gateway, Paths(work, work), interval=60, clock=clock)
        end = T0.timestamp() + minutes * 60
        queued = 0
        cycles = posts = 0
        while clock().timestamp() < end:
            if queued - len(phone.send_times) < rate + 10:  # the webapp always has more
                for i in range(queued, queued + rate):
                    app.queue("+254700000001", f"rate {rate} message {i}", id=f"r{rate}-{i}")
                queued += rate
            report = daemon_step(daemon, clock)
            cycles += 1
            if report is None or report.errors:
                raise RuntimeError(f"cycle failed: {report.errors if report else 'crashed'}")
            posts += report.posts
        client.close()
    finally:
        if saved_time is not None:
            smsgw.daemon.time = saved_time  # type: ignore[assignment]
        app.stop()
    times = [t.timestamp() - T0.timestamp() for t in phone.send_times]
    return {"rate": rate, "minutes": minutes, "times": times, "cycles": cycles, "posts": posts,
            "phone_calls": phone.calls}


def real_rate(work: Path, seconds: float) -> dict[str, Any]:
    """A real `smsgw run` at the default limit over the fakes for `seconds`."""
    fake = FakeTermux(work / "phone-real")
    fake.set_mode(latency=LATENCY)
    home = SmsgwHome(work / "real", fake)
    with WebappProcess() as webapp:
        webapp.queue_many(int(seconds / 60 * 30) + 40, prefix="real")
        home.write_config(url=webapp.url, interval=60)  # max_parts_per_minute: the default 30
        t0 = time.time()
        proc = home.popen("run")
        try:
            time.sleep(seconds)
        finally:
            home.stop(proc)
    times = [c["time"] - t0 for c in fake.calls(SEND)]
    return {"times": times, "seconds": seconds}


def rate_rows(out: Output, key: str, label: str, rate: int, times: list[float],
              span: float) -> None:
    worst = max_in_window(times, 60.0)
    out.add(f"{key}a", f"{label}: most sends in any 60 s window", worst, "SMS",
            f"<= {rate}", worst <= rate)
    if len(times) < 2:
        out.add(f"{key}b", f"{label}: achieved rate", None, "/min", f"~{rate}/min", False,
                note="fewer than two sends")
        return
    start = min(times)
    achieved = mean_rate(times, 60.0, start, start + span)
    out.add(f"{key}b", f"{label}: achieved rate", achieved, "/min",
            f"{0.95 * rate:g}..{rate}/min", 0.95 * rate <= achieved <= rate, digits=1)


# the figure ------------------------------------------------------------------------------------
def run(quick: bool, work: Path) -> Output:
    out = Output("send")
    n = 100 if quick else 500
    say(f"1. throughput: {n} messages, fake latency {LATENCY} s per termux call")
    t = throughput(work / "throughput", n, LATENCY)
    out.data["throughput"] = t
    wall, ideal = t["wall"], n * LATENCY
    calls = t["calls"]
    n_list, t_list = calls.get(LIST, (0, 0.0))
    n_all = sum(c for c, _ in calls.values())
    t_all = sum(s for _, s in calls.values())
    latencies = n_all * LATENCY
    fake_start = (t_all - latencies) / max(n_all, 1)
    out.add("1.1", f"send: wall / ({n} x {LATENCY} s)", wall / ideal, "",
            "<= 1.05", wall / ideal <= 1.05,
            note=f"wall {wall:.1f} s for an ideal {ideal:.0f} s; includes the fake "
                 f"executables' own start-up ({fake_start * 1000:.0f} ms a call), see 1.6")
    out.add("1.2", "send: termux-sms-send calls per message", t["send_calls"] / n, "",
            "exactly 1, each text once", t["send_calls"] == n and t["each_once"])
    out.add("1.3", "send: list calls before the last send", f"{n_list} calls, {t_list:.2f} s",
            "", "(separately)", None)
    out.add("1.4", "send: wall / (all fake latencies)", wall / latencies, "", "<= 1.05",
            wall / latencies <= 1.05,
            note=f"{n_all} termux calls x {LATENCY} s = {latencies:.1f} s: the fake's latency "
                 "applies to list calls too")
    out.add("1.5", "send: fake termux-* own cost per call", fake_start * 1000, "ms", "(fake)",
            None, digits=0)
    no_fake = wall - (t_all - latencies)
    out.add("1.6", "send: (wall - fake start-up) / all latencies", no_fake / latencies, "",
            "<= 1.05", no_fake / latencies <= 1.05,
            note="as on a phone where every termux call costs exactly the latency")
    own = wall - t_all
    out.add("1.7", "send: gateway's own time per message", own / n * 1000, "ms", "(info)",
            None, digits=1, note=f"{own:.1f} s outside termux calls until the last send")
    ups = t.get("updates_total", 0)
    out.add("1.8", "send: POSTs, status updates posted per message",
            f"{t.get('posts_total', '?')} POSTs, {ups / n:.2f} updates/msg", "",
            "(3: UNSENT, PENDING, SENT)", None)
    confirms = t.get("confirm_cycles") or []
    if confirms:
        heavy = max(confirms, key=lambda c: c["excluding_calls"])
        out.add("1.9", f"send: reconcile cycle confirming {n} (no termux time)",
                heavy["excluding_calls"], "s", "(info)", None,
                note=f"all {t.get('all_sent_reported')} SENT reported after "
                     f"{len(confirms)} cycles")

    say(f"1. profile: {n} messages at latency 0 under cProfile")
    p = throughput(work / "profile", n, 0.0, profile=True, confirm=False)
    out.profiles["send: gateway work per message (latency 0)"] = p["profile"]
    out.data["profile_run"] = {k: v for k, v in p.items() if k != "profile"}
    n0_all = sum(c for c, _ in p["calls"].values())
    t0_all = sum(s for _, s in p["calls"].values())
    out.add("1.10", "send at latency 0: messages per second", n / p["wall"], "/s", "(info)",
            None, digits=1, note=f"{(p['wall'] - t0_all) / n * 1000:.1f} ms gateway + "
                                  f"{t0_all / max(n0_all, 1) * 1000:.0f} ms fake per call")

    minutes30, minutes200 = (4, 3) if quick else (10, 6)
    say(f"1. rate limit 30/min, injected clock, {minutes30} simulated minutes")
    r30 = rate_sim(work / "rate30", 30, minutes30)
    rate_rows(out, "1.11", "default 30/min (injected clock)", 30, r30["times"],
              minutes30 * 60)
    say(f"1. rate limit 200/min, injected clock, {minutes200} simulated minutes")
    r200 = rate_sim(work / "rate200", 200, minutes200)
    rate_rows(out, "1.12", "200/min (injected clock)", 200, r200["times"], minutes200 * 60)
    for r, key in ((r30, "1.13a"), (r200, "1.13b")):
        sent = max(len(r["times"]), 1)
        out.add(key, f"{r['rate']}/min: cycles, POSTs, phone calls per sent SMS",
                f"{r['cycles'] / sent:.2f} / {r['posts'] / sent:.2f} / "
                f"{r['phone_calls'] / sent:.2f}", "", "(info)", None,
                note=f"{r['cycles']} cycles in {r['minutes']} simulated minutes for "
                     f"{len(r['times'])} sends")
    out.data["rate_sim"] = {"30": r30, "200": r200}

    if not quick:
        say("1. rate limit 30/min: a real `smsgw run` for 185 s (fake latency 0.2 s)")
        real = real_rate(work / "real", 185.0)
        out.data["rate_real"] = real
        times = real["times"]
        rate_rows(out, "1.14", "default 30/min (real daemon, 3 min)", 30, times, 180.0)
    return out


if __name__ == "__main__":
    bench_main("send", run)
