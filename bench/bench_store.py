"""Figure 3: how the store's share of a cycle scales with archived and active messages.

The Gateway in-process with a stub webapp object that answers [] (no network) and a
SimulatedPhone (no processes), on a fixed injected clock, so a cycle's time is the store's
work plus the gateway's bookkeeping. Archived records are written by the real
`Archive.append`, spread over the retention period (one state/archive/DAY.jsonl a day).
"""

from __future__ import annotations

import cProfile
import gc
import os
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchlib import (
    NUMBER,
    T0,
    Output,
    SimClock,
    StubWebapp,
    bench_main,
    median,
    percentile,
    proc_status_kb,
    profile_text,
    say,
)

from smsgw.config import Settings
from smsgw.gateway import Gateway
from smsgw.models import HistoryEntry, Offered, Outgoing, OutState, Part, PartState, RateLog
from smsgw.phone.simulated import SimulatedPhone
from smsgw.store import Batch, Store

NOW = T0
TEXT = "Your appointment at the clinic is confirmed for Tuesday at 10:00. Reply STOP to opt out."


def archived(i: int, at: Any) -> dict[str, Any]:
    """An outgoing record as the gateway archives it after SENT."""
    msg = Outgoing(id=f"arch-{i:06d}", to=NUMBER, content=f"{TEXT} #{i}", state=OutState.SENT,
                   created=at, last_activity=at, seq=i + 1, due=at,
                   parts=[Part(f"{TEXT} #{i}", PartState.SENT, at, f"{i}|254700000001|x|y")],
                   history=[HistoryEntry(s, at) for s in ("UNSENT", "SENDING", "PENDING",
                                                          "SENT")])
    return msg.to_dict()


def fill_archive(store: Store, count: int, days: int = 29, chunk: int = 1000) -> None:
    """`count` archived records over the last `days` days, through Archive.append."""
    per_day = -(-count // days)
    written = 0
    for d in range(days):
        at = NOW - timedelta(days=days - 1 - d)
        todo = min(per_day, count - written)
        for start in range(0, todo, chunk):
            k = min(chunk, todo - start)
            store.archive.append(at, [("out", archived(written + start + j, at))
                                      for j in range(k)])
        written += todo
        if written >= count:
            break


def add_active(store: Store, count: int, pending: bool) -> None:
    """`count` active messages: an UNSENT backlog with the rate budget spent, or PENDING
    ones awaiting the phone's record. Their status updates count as already posted."""
    with store.unit(NOW) as u:
        for i in range(count):
            if pending:
                msg = Outgoing(id=f"act-{i}", to=NUMBER, content=f"{TEXT} a{i}",
                               state=OutState.PENDING, created=NOW, last_activity=NOW,
                               parts=[Part(f"{TEXT} a{i}", PartState.PENDING, NOW)],
                               history=[HistoryEntry(s, NOW) for s in
                                        ("UNSENT", "SENDING", "PENDING")])
            else:
                msg = Outgoing(id=f"act-{i}", to=NUMBER, content=f"{TEXT} a{i}",
                               state=OutState.UNSENT, created=NOW, last_activity=NOW, due=NOW,
                               history=[HistoryEntry("UNSENT", NOW)])
            u.add(msg)
        if not pending:
            u.rate_log = RateLog(((NOW, 30),))  # the default budget is spent


def cycle_times(stores: list[Store], cycles: int, profile: bool = False,
                ) -> list[dict[str, Any]]:
    """Time `cycles` cycles of each store, interleaved round by round so that a change in
    the machine's load hits every store alike; medians per store."""
    clock = SimClock(NOW)
    gateways = [Gateway(st, StubWebapp(), SimulatedPhone(clock), Settings(), clock=clock)
                for st in stores]
    for gateway in gateways:
        for _ in range(3):
            gateway.cycle()
    walls: list[list[float]] = [[] for _ in stores]
    cpus: list[list[float]] = [[] for _ in stores]
    prof = cProfile.Profile() if profile else None
    for _ in range(cycles):
        for k, gateway in enumerate(gateways):
            c0, w0 = time.process_time(), time.perf_counter()
            if prof:
                prof.enable()
            report = gateway.cycle()
            if prof:
                prof.disable()
            walls[k].append(time.perf_counter() - w0)
            cpus[k].append(time.process_time() - c0)
            if report.errors:
                raise RuntimeError(f"cycle failed: {report.errors}")
    outs = []
    for k, store in enumerate(stores):
        out = {"median_ms": median(walls[k]) * 1000, "p90_ms": percentile(walls[k], 90) * 1000,
               "cpu_ms": median(cpus[k]) * 1000, "cpu_mean_ms": statistics.fmean(cpus[k]) * 1000,
               "state_kb": store.path.stat().st_size / 1024}
        if prof is not None:
            out["profile"] = prof
        outs.append(out)
    return outs


def run(quick: bool, work: Path) -> Output:
    out = Output("store")
    cycles = 20 if quick else 100
    sizes = (0, 10_000, 100_000)
    timings: dict[str, dict[str, Any]] = {}
    stores = []
    for size in sizes:
        store = Store(work / f"archived-{size}")
        if size:
            say(f"3. writing {size:,} archived records through Archive.append")
            fill_archive(store, size)
        stores.append(store)
    os.sync()  # the archive's dirty pages must not land in the timed cycles' fsyncs
    say(f"3. {cycles} cycles each with 0, 10,000 and 100,000 archived, interleaved")
    for size, t in zip(sizes, cycle_times(stores, cycles), strict=True):
        timings[f"archived-{size}"] = t
    empty = timings["archived-0"]
    out.add("3.1", "store: cycle CPU, empty store", empty["cpu_ms"], "ms", "(baseline)", None,
            digits=2, note=f"median of {cycles} cycles; wall median {empty['median_ms']:.1f} ms "
                           "(mostly the fsyncs of one state.json write)")
    for key, size in (("3.2", 10_000), ("3.3", 100_000)):
        t = timings[f"archived-{size}"]
        ratio = t["cpu_ms"] / empty["cpu_ms"]
        out.add(key, f"store: cycle CPU with {size:,} archived / empty", ratio, "x",
                "<= 1.2", ratio <= 1.2,
                note=f"CPU {t['cpu_ms']:.2f} ms; wall median {t['median_ms']:.1f} ms, p90 "
                     f"{t['p90_ms']:.1f} ms (wall ratio "
                     f"{t['median_ms'] / empty['median_ms']:.2f}, fsync noise)")

    say("3. first dedup lookup after a start, and a retry lookup, with 100,000 archived")
    fresh = Store(work / "archived-100000")
    gc.collect()
    rss0 = proc_status_kb("VmRSS")
    t0 = time.perf_counter()
    fresh.archive.status_of("not-there")
    build = time.perf_counter() - t0
    gc.collect()
    index_mb = (proc_status_kb("VmRSS") - rss0) / 1024
    t0 = time.perf_counter()
    fresh.archive.matching("out", "arch-000005")  # what `smsgw retry/cancel ID` reads
    find = time.perf_counter() - t0
    out.add("3.4", "store: first offered id after a start (100k archived)", build * 1000, "ms",
            "(info, once)", None, digits=0, note="Archive.refresh reads every day file once, "
                                                 "outside the state lock")
    out.add("3.4b", "store: memory of the archive id index (100k)", index_mb, "MB", "(info)",
            None, digits=1, note="RSS growth when the index is built; it stays for the "
                                 "daemon's life (compare with 2.4 and its 40 MB target)")
    out.add("3.5", "store: `smsgw retry ID` archive lookup (100k)", find * 1000, "ms", "(info)",
            None, digits=0, note="Archive.matching parses only the lines holding the id "
                                 "(an id or a prefix alike)")

    say("3. re-offers of finished ids, with 100,000 archived")
    for key, count in (("3.8", 25), ("3.9", 10_000)):
        ids = [f"arch-{i:06d}" for i in range(0, 100_000, 100_000 // count)][:count]
        offered = [(Offered(i, NUMBER, "again"), None) for i in ids]
        fresh.complete_exchange(Batch(), [], NOW)  # warm: the index is built
        t0 = time.perf_counter()
        result = fresh.complete_exchange(Batch(), offered, NOW)
        took = time.perf_counter() - t0
        assert len(result.known) == count, (len(result.known), count)
        target, ok = ("<= 20", took * 1000 <= 20) if count == 25 else (
            "<= 60000 (one interval)", took <= 60)
        out.add(key, f"store: a POST re-offering {count:,} finished ids (100k archived)",
                took * 1000, "ms", target, ok, digits=1,
                note="complete_exchange: dedup lookups and the statuses queued again")
        with fresh.unit(NOW) as u:  # posted: the next round starts empty
            u.db.table("updates").truncate()

    for key, pending in (("3.6", False), ("3.7", True)):
        label = "PENDING awaiting record" if pending else "UNSENT backlog, rate-limited"
        say(f"3. {cycles} cycles with 1,000 active ({label})")
        store = Store(work / f"active-{int(pending)}")
        add_active(store, 1000, pending)
        t = cycle_times([store], cycles, profile=not pending)[0]
        prof = t.pop("profile", None)
        if prof is not None:
            out.profiles["store: cycle with 1,000 active (backlog)"] = profile_text(
                prof, f"{cycles} cycles with 1,000 active UNSENT messages, rate-limited",
                per=cycles)
        timings[f"active-{int(pending)}"] = t
        out.add(key, f"store: cycle with 1,000 active ({label})", t["median_ms"], "ms",
                "<= 50", t["median_ms"] <= 50, digits=1,
                note=f"p90 {t['p90_ms']:.1f} ms, CPU {t['cpu_ms']:.1f} ms, "
                     f"state.json {t['state_kb']:.0f} kB")
    out.data["timings"] = timings
    return out


if __name__ == "__main__":
    bench_main("store", run)
