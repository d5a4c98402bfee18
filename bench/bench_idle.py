"""Figure 2: the cost of an idle cycle (nothing received, nothing to send).

- A real `smsgw run --interval 1` over the fake termux-* (latency 0) and the reference
  webapp in its own process: termux calls and the daemon's own CPU time per idle cycle,
  read from /proc/PID/stat (the fake executables are children: not counted), and its RSS.
- The Gateway in-process with a SimulatedPhone against the reference webapp (own
  process), 10,000 cycles: RSS from /proc/self/status every 1,000 cycles; also state.json
  writes and fsyncs per idle cycle and a cProfile of idle cycles.
- In-process over fakes in `old_version` mode: termux calls per idle cycle when
  --message-selection is not supported (information).
"""

from __future__ import annotations

import cProfile
import os
import time
from pathlib import Path
from typing import Any

from benchlib import (
    FakeTermux,
    Output,
    SmsgwHome,
    TimedTermuxPhone,
    WebappProcess,
    bench_main,
    daemon_logging,
    fakes_in_process,
    proc_cpu_seconds,
    proc_status_kb,
    profile_text,
    say,
    wait_until,
)

import smsgw.store.storage
from smsgw.config import Settings
from smsgw.gateway import Gateway
from smsgw.phone.simulated import SimulatedPhone
from smsgw.store import Store
from smsgw.webapp import WebappClient


def daemon_idle(work: Path, cycles: int) -> dict[str, Any]:
    """Idle cycles of a real daemon: termux calls, CPU seconds and RSS."""
    fake = FakeTermux(work / "phone")
    home = SmsgwHome(work / "daemon", fake)
    with WebappProcess() as webapp:
        home.write_config(url=webapp.url)
        proc = home.popen("run", "--interval", "1")
        try:
            def settled_after(count: int) -> tuple[float, int, int]:
                """Wait for POST number `count`, let that cycle end, then sample."""
                wait_until(lambda: webapp.posts() >= count, timeout=cycles * 3 + 60,
                           poll=0.05, what=f"POST {count}")
                time.sleep(0.3)  # the cycle ends a few ms after its POST; next one in ~1 s
                return (proc_cpu_seconds(proc.pid), fake.call_count(), webapp.posts())

            cpu0, calls0, posts0 = settled_after(3)  # warmed up: probe and position done
            cpu1, calls1, posts1 = settled_after(posts0 + cycles)
            rss = proc_status_kb("VmRSS", proc.pid)
            hwm = proc_status_kb("VmHWM", proc.pid)
        finally:
            home.stop(proc)
    n = posts1 - posts0
    return {"cycles": n, "cpu_per_cycle": (cpu1 - cpu0) / n, "calls_per_cycle":
            (calls1 - calls0) / n, "rss_kb": rss, "hwm_kb": hwm,
            "names": sorted({c["name"] for c in fake.calls()})}


class Counting:
    """Counts calls of a module attribute while installed (os.fsync, atomic_write_text)."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name, self.count = owner, name, 0
        self.original = getattr(owner, name)

    def __enter__(self) -> Counting:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return self.original(*args, **kwargs)

        setattr(self.owner, self.name, wrapper)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.owner, self.name, self.original)


def inprocess_idle(work: Path, cycles: int, profile_cycles: int) -> dict[str, Any]:
    """Idle Gateway cycles in this process: RSS every 1,000, CPU, writes, a profile."""
    rss: list[tuple[int, int]] = [(0, proc_status_kb("VmRSS"))]
    with WebappProcess() as webapp:
        daemon_logging(work, webapp.url)
        store = Store(work / "state")
        client = WebappClient(webapp.url)
        gateway = Gateway(store, client, SimulatedPhone(), Settings(url=webapp.url))
        gateway.cycle()
        rss.append((1, proc_status_kb("VmRSS")))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(2, cycles + 1):
            report = gateway.cycle()
            if report.errors:
                raise RuntimeError(f"cycle {i} failed: {report.errors}")
            if i % 1000 == 0:
                rss.append((i, proc_status_kb("VmRSS")))
                say(f"   cycle {i}: RSS {rss[-1][1] / 1024:.1f} MB")
        cpu = (time.process_time() - cpu0) / (cycles - 1)
        wall = (time.perf_counter() - wall0) / (cycles - 1)
        hwm = proc_status_kb("VmHWM")
        with Counting(os, "fsync") as fsyncs, \
                Counting(smsgw.store.storage, "atomic_write_text") as writes:
            for _ in range(100):
                gateway.cycle()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(profile_cycles):
            gateway.cycle()
        prof.disable()
        client.close()
        posts = webapp.posts()
    return {"rss": rss, "hwm_kb": hwm, "cpu_per_cycle": cpu, "wall_per_cycle": wall,
            "writes_per_cycle": writes.count / 100, "fsyncs_per_cycle": fsyncs.count / 100,
            "posts": posts,
            "profile": profile_text(prof, f"{profile_cycles} idle cycles in-process "
                                    "(SimulatedPhone, reference webapp over HTTP)",
                                    per=profile_cycles)}


def old_termux_idle(work: Path, cycles: int) -> float:
    """Termux calls per idle cycle when termux-sms-list ignores --message-selection."""
    fake = FakeTermux(work / "phone-old")
    fake.set_mode(old_version=1)
    for i in range(30):
        fake.receive("+254700000009", f"old inbox row {i}")
    with fakes_in_process(fake), WebappProcess() as webapp:
        store = Store(work / "state-old")
        client = WebappClient(webapp.url)
        phone = TimedTermuxPhone()
        gateway = Gateway(store, client, phone, Settings(url=webapp.url))
        gateway.cycle()
        gateway.cycle()
        before = len(phone.log)
        for _ in range(cycles):
            gateway.cycle()
        client.close()
    return (len(phone.log) - before) / cycles


def run(quick: bool, work: Path) -> Output:
    out = Output("idle")
    n = 20 if quick else 100
    say(f"2. a real `smsgw run --interval 1`: {n} idle cycles")
    d = daemon_idle(work / "daemon", n)
    out.data["daemon"] = d
    out.add("2.1", "idle: termux calls per cycle (daemon)", d["calls_per_cycle"], "",
            "<= 1", d["calls_per_cycle"] <= 1,
            note=f"over {d['cycles']} cycles; commands seen: {', '.join(d['names'])}")
    ms = d["cpu_per_cycle"] * 1000
    out.add("2.2", "idle: daemon CPU per cycle (/proc/PID/stat)", ms, "ms", "<= 20",
            ms <= 20, digits=1, note="user+system of the daemon alone (10 ms clock ticks); "
                                     "the fake termux-* children are not counted")
    out.add("2.3", f"idle: daemon RSS after {d['cycles'] + 3} cycles",
            d["rss_kb"] / 1024, "MB", "(info)", None, digits=1,
            note=f"peak {d['hwm_kb'] / 1024:.1f} MB")

    m = 2_000 if quick else 10_000
    say(f"2. in-process: {m} idle cycles (SimulatedPhone, reference webapp)")
    p = inprocess_idle(work / "inproc", m, 100 if quick else 300)
    out.profiles["idle: in-process idle cycle"] = p.pop("profile")
    out.data["inprocess"] = p
    rss = p["rss"]
    start, end = rss[1][1], rss[-1][1]
    peak = max(v for _, v in rss)
    base_i, base = next(((i, v) for i, v in rss if i >= 1000), rss[-1])
    out.add("2.4", f"idle: RSS after {m:,} cycles (in-process)", end / 1024, "MB",
            "<= 40", end / 1024 <= 40, digits=1,
            note=f"start {start / 1024:.1f} MB (after cycle 1), end {end / 1024:.1f}, "
                 f"peak sample {peak / 1024:.1f}, VmHWM {p['hwm_kb'] / 1024:.1f} MB")
    growth = (end - base) / 1024
    out.add("2.5", f"idle: RSS growth cycle {base_i:,} -> {m:,}", growth, "MB", "<= 1 (none)",
            growth <= 1.0, digits=2,
            note="samples (cycle: MB): " + ", ".join(f"{i}: {v / 1024:.1f}" for i, v in rss))
    out.add("2.6", "idle: in-process CPU per cycle (process_time)",
            p["cpu_per_cycle"] * 1000, "ms", "(info)", None, digits=1,
            note=f"wall {p['wall_per_cycle'] * 1000:.1f} ms a cycle; no termux process")
    out.add("2.7", "idle: state.json writes, fsyncs per cycle",
            f"{p['writes_per_cycle']:.2f} / {p['fsyncs_per_cycle']:.2f}", "", "(info)", None)

    say("2. in-process over fakes without --message-selection (old Termux:API)")
    old = old_termux_idle(work / "old", 10 if quick else 30)
    out.add("2.8", "idle: termux calls per cycle, old Termux:API", old, "", "(info)", None)
    return out


if __name__ == "__main__":
    bench_main("idle", run)
