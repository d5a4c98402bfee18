"""Figure 4: 1,000 SMS arrive at once; how many POSTs, termux calls and seconds to forward them.

The Gateway in-process over the fake termux-* (latency 0, so the wall time holds only the
fake's own start-up, measured and shown) and the reference webapp in its own process.
The daemon's pacing is followed: another cycle at once while `report.more`.
"""

from __future__ import annotations

import cProfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    FakeTermux,
    Output,
    TimedTermuxPhone,
    WebappProcess,
    bench_main,
    daemon_logging,
    fakes_in_process,
    profile_text,
    say,
)

from smsgw.config import Settings
from smsgw.daemon import MAX_IMMEDIATE
from smsgw.gateway import Gateway
from smsgw.store import Store
from smsgw.webapp import WebappClient

LIST = "termux-sms-list"


def burst(work: Path, count: int, profile: bool) -> dict[str, Any]:
    fake = FakeTermux(work / "phone")
    with fakes_in_process(fake), WebappProcess() as webapp:
        daemon_logging(work, webapp.url)
        store = Store(work / "state")
        client = WebappClient(webapp.url)
        phone = TimedTermuxPhone()
        gateway = Gateway(store, client, phone, Settings(url=webapp.url))
        gateway.cycle()  # a running daemon: probe and inbox position done
        phone.log.clear()
        fake.reset_calls()
        posts0 = webapp.posts()
        fake.receive_many((f"+2547{i:08d}", f"burst message {i}: the clinic is open")
                          for i in range(count))
        prof = cProfile.Profile() if profile else None
        cycles = []
        t0 = time.perf_counter()
        for _ in range(MAX_IMMEDIATE + 1):
            if prof:
                prof.enable()
            report = gateway.cycle()
            if prof:
                prof.disable()
            cycles.append({"received": report.received, "posts": report.posts,
                           "forwarded": report.forwarded, "errors": report.errors})
            if not report.more:
                break
        wall = time.perf_counter() - t0
        state = webapp.state()
        client.close()
    return {
        "count": count, "wall": wall, "cycles": cycles,
        "posts": state["counters"]["posts"] - posts0,
        "received": len(state["received"]),
        "duplicates": state["counters"]["duplicate_messages"],
        "lists": phone.time_in(LIST), "all_calls": phone.time_in(None),
        "fake_lists": fake.call_count(LIST),
        "profile": profile_text(prof, f"{count} SMS burst, all cycles until forwarded")
        if prof else None,
    }


def run(quick: bool, work: Path) -> Output:
    out = Output("burst")
    count = 1000
    say(f"4. {count} SMS arrive at once (fake latency 0)")
    b = burst(work / "burst", count, profile=False)
    say("4. the same under cProfile")
    p = burst(work / "burst-profile", count, profile=True)
    out.profiles["burst: 1,000 SMS forwarded"] = p.pop("profile")
    b.pop("profile")
    out.data["burst"] = b
    ok_all = b["received"] == count
    out.add("4.1", f"burst: SMS at the webapp / {count}", b["received"], "", f"= {count}",
            ok_all, note=f"{b['duplicates']} duplicate deliveries; cycles: {b['cycles']}")
    out.add("4.2", "burst: POSTs", b["posts"], "", "<= 20", b["posts"] <= 20)
    n_list, t_list = b["lists"]
    out.add("4.3", "burst: termux-sms-list calls", n_list, "", "<= 12", n_list <= 12,
            note=f"fake's own log agrees: {b['fake_lists']}")
    n_all, t_all = b["all_calls"]
    out.add("4.4", "burst: wall time, fake latency 0", b["wall"], "s", "<= 5",
            b["wall"] <= 5, note=f"of which {t_all:.2f} s in {n_all} fake termux calls")
    out.add("4.5", "burst: wall time outside termux calls", b["wall"] - t_all, "s", "(info)",
            None)
    return out


if __name__ == "__main__":
    bench_main("burst", run)
