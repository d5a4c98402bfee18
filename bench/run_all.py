#!/usr/bin/env python3
"""Run every smsgw benchmark and print one table: figure, value, target, PASS/FAIL.

    python bench/run_all.py            # the full run (about 12-15 minutes)
    python bench/run_all.py --quick    # a shorter smoke run (about 2-4 minutes)
    python bench/run_all.py --only send,cli

Each benchmark runs in its own Python process (clean memory and environment) against a
snapshot of smsgw/ taken at the start, so one run measures one version even while the
checkout changes; results go to bench/results/latest.json and the profiles to
bench/results/profiles/. On demand
only: a FAIL is a finding to report, not a broken build (exit status 0 unless a
benchmark itself crashed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    BENCH,
    REPO,
    RESULTS,
    Result,
    machine_info,
    machine_line,
    smsgw_version,
    table,
)

BENCHES = {  # name: (script, figure)
    "send": ("bench_send.py", "1. send throughput and rate limit"),
    "idle": ("bench_idle.py", "2. idle cost"),
    "store": ("bench_store.py", "3. store scaling"),
    "burst": ("bench_burst.py", "4. incoming burst"),
    "latency": ("bench_latency.py", "5. latency"),
    "cli": ("bench_cli.py", "6. CLI start-up"),
}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def run_one(name: str, quick: bool, timeout: float) -> dict[str, Any]:
    script, title = BENCHES[name]
    print(f"\n== {title} ({script}) ==", flush=True)
    with tempfile.TemporaryDirectory(prefix="smsgw-bench-") as tmp:
        path = Path(tmp) / "out.json"
        cmd = [sys.executable, str(BENCH / script), "--json", str(path)]
        if quick:
            cmd.append("--quick")
        load_before = loadavg()
        started = time.perf_counter()
        error = None
        try:
            done = subprocess.run(cmd, timeout=timeout)
            if done.returncode != 0:
                error = f"exit status {done.returncode}"
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:g} s"
        seconds = time.perf_counter() - started
        out = json.loads(path.read_text()) if path.exists() and error is None else {
            "name": name, "results": [], "profiles": {}, "data": {}}
    out.update(title=title, error=error, wall_seconds=round(seconds, 1),
               load_before=load_before, load_after=loadavg())
    print(f"   {name}: {seconds:.0f} s, load average {load_before} -> {out['load_after']}"
          + (f", ERROR: {error}" if error else ""), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter smoke run")
    ap.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    ap.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = ap.parse_args()
    names = list(BENCHES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHES]
        if unknown:
            ap.error(f"unknown benchmark(s): {', '.join(unknown)}")

    # Every benchmark measures this copy of smsgw/, taken now: the checkout may change
    # during a run of several minutes.
    snapshot = Path(tempfile.mkdtemp(prefix="smsgw-bench-src-"))
    os.environ["SMSGW_BENCH_COMMIT"] = smsgw_version()
    shutil.copytree(REPO / "smsgw", snapshot / "smsgw",
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.environ["SMSGW_BENCH_SRC"] = str(snapshot)
    machine = machine_info()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    print(f"smsgw benchmarks ({'quick' if args.quick else 'full'}) on {machine_line(machine)}")
    try:
        outputs = [run_one(n, args.quick, args.timeout) for n in names]
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)

    results: list[Result] = []
    for out in outputs:
        if out["error"]:
            results.append(Result(f"{out['title'].split('.')[0]}.!", f"{out['name']}: benchmark "
                                  "did not finish", out["error"], ok=False))
        for r in out["results"]:
            results.append(Result(**{k: r[k] for k in (
                "key", "figure", "value", "unit", "target", "ok", "note", "digits")}))

    profiles_dir = args.output.parent / "profiles"
    if not args.only and profiles_dir.is_dir():  # a full set replaces the previous one
        for stale in profiles_dir.glob("*.txt"):
            stale.unlink()
    profiles_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for out in outputs:
        for title, text in out.get("profiles", {}).items():
            path = profiles_dir / f"{slug(title)}.txt"
            path.write_text(text + "\n", encoding="utf-8")
            written.append(path)

    seconds = time.perf_counter() - t0
    summary = {v: sum(1 for r in results if r.verdict == v) for v in ("PASS", "FAIL", "info")}
    report = {
        "mode": "quick" if args.quick else "full",
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "machine": machine,
        "summary": summary,
        "results": [r.to_json() for r in results],
        "benchmarks": outputs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")

    print(f"\n\nsmsgw benchmarks, {report['mode']} run of {started:%Y-%m-%d %H:%M} UTC, "
          f"{seconds / 60:.1f} min")
    print(f"machine: {machine_line(machine)}")
    print("load average per benchmark: " + ", ".join(
        f"{o['name']} {o['load_before']} -> {o['load_after']}" for o in outputs))
    print()
    print(table(results))
    failing = [r for r in results if r.ok is False]
    print(f"\n{summary['PASS']} PASS, {summary['FAIL']} FAIL, {summary['info']} info"
          + (": failing " + ", ".join(r.key for r in failing) if failing else ""))
    print(f"results: {args.output}")
    for path in written:
        print(f"profile: {path}")
    return 1 if any(o["error"] for o in outputs) else 0


if __name__ == "__main__":
    sys.exit(main())
