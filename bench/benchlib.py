"""Shared helpers for the smsgw benchmarks: machine facts, results, fakes, webapp, processes.

Stdlib plus the project only. Every benchmark imports this module first: it puts the
checkout and tests/ (for the fake termux-* executables) on sys.path.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import io
import json
import math
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TESTS = REPO / "tests"
RESULTS = BENCH / "results"
# The smsgw sources under test: run_all.py points this at a snapshot of smsgw/ taken when
# the run starts, so every figure of one run measures the same code even while the
# checkout changes. Subprocesses run with it as their cwd and PYTHONPATH.
SRC = Path(os.environ.get("SMSGW_BENCH_SRC") or REPO)
for _p in (str(SRC), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from fakes import FakeTermux  # noqa: E402
from fakes.faketermux import BIN_DIR  # noqa: E402

from smsgw.phone.simulated import SimulatedPhone  # noqa: E402
from smsgw.phone.termux import TermuxPhone  # noqa: E402

LATENCY = 0.2  # seconds the fake termux-* commands sleep per call, where a figure needs it
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
NUMBER = "+254700000001"
SMSGW_ARGV = [sys.executable, "-c", "from smsgw.cli import main; main()"]



def say(text: str) -> None:
    """A progress line on stderr (the result table goes to stdout)."""
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# machine -------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """CPU model and cores from /proc/cpuinfo, Python version, kernel, smsgw commit (as
    run_all.py recorded it with its snapshot, else the checkout's)."""
    model, hardware, cores = "", "", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and not model:
                model = value
            elif key == "Hardware" and not hardware:
                hardware = value  # ARM phones name the SoC here
            elif key == "processor":
                cores += 1
    except OSError:
        pass
    model = model or hardware or platform.processor() or "?"
    return {
        "cpu": model,
        "cores": cores or os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "commit": os.environ.get("SMSGW_BENCH_COMMIT") or smsgw_version(),
    }


def smsgw_version() -> str:
    """The checkout's commit, marked when smsgw/ has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "smsgw"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (commit or "?") + (" (smsgw/ modified)" if dirty else "")


def machine_line(m: dict[str, Any]) -> str:
    return f"{m['cpu']}, {m['cores']} cores; {m['python']}; {m['system']}; smsgw {m['commit']}"


# results -------------------------------------------------------------------------------------
@dataclass
class Result:
    """One figure: its value, the target, PASS/FAIL (ok None: information only)."""

    key: str
    figure: str
    value: float | int | str | None
    unit: str = ""
    target: str = ""
    ok: bool | None = None
    note: str = ""
    digits: int = 2

    @property
    def verdict(self) -> str:
        return "info" if self.ok is None else "PASS" if self.ok else "FAIL"

    def shown(self) -> str:
        v = self.value
        if v is None:
            text = "n/a"
        elif isinstance(v, float):
            text = f"{v:.{self.digits}f}"
        else:
            text = str(v)
        return f"{text} {self.unit}".strip()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shown"] = self.shown()
        d["verdict"] = self.verdict
        return d


@dataclass
class Output:
    """What one benchmark produced: results, profile texts, raw data for the README."""

    name: str
    results: list[Result] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, *args: Any, **kwargs: Any) -> Result:
        r = Result(*args, **kwargs)
        self.results.append(r)
        return r

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "seconds": round(self.seconds, 1),
                "results": [r.to_json() for r in self.results],
                "profiles": self.profiles, "data": self.data}


def table(results: list[Result]) -> str:
    """The results as a text table: figure, value, target, PASS/FAIL/info."""
    rows = [("#", "figure", "value", "target", "result")]
    rows += [(r.key, r.figure, r.shown(), r.target or "-", r.verdict) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {r.key}: {r.note}" for r in results if r.note]
    if notes:
        lines += ["", "notes:"] + notes
    return "\n".join(lines)


# statistics ----------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation; nan for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def distribution(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "min": min(values, default=math.nan), "median": median(values),
            "p90": percentile(values, 90), "max": max(values, default=math.nan)}


def max_in_window(times: list[float], window: float) -> int:
    """The most events inside any half-open window [t, t + window)."""
    s = sorted(times)
    best, j = 0, 0
    for i in range(len(s)):
        while s[i] - s[j] >= window:
            j += 1
        best = max(best, i - j + 1)
    return best


def mean_rate(times: list[float], window: float, start: float, end: float,
              step: float = 0.1) -> float:
    """Time-averaged count of events in [t, t + window) for t in [start, end - window]."""
    s = sorted(times)
    counts = []
    t = start
    while t + window <= end + 1e-9:
        counts.append(bisect.bisect_left(s, t + window) - bisect.bisect_left(s, t))
        t += step
    return statistics.fmean(counts) if counts else math.nan


# profiles ------------------------------------------------------------------------------------
def _where(filename: str, line: int, func: str) -> str:
    if filename == "~":
        return func  # a builtin
    path = filename
    for root, prefix in ((str(SRC) + os.sep, ""), (str(REPO) + os.sep, ""),
                         ("site-packages" + os.sep, "")):
        k = path.find(root)
        if k >= 0:
            path = prefix + path[k + len(root):]
            break
    else:
        path = os.path.basename(path)
    return f"{path}:{line}({func})"


def profile_table(stats: pstats.Stats, sort: str = "cumulative", limit: int = 20,
                  per: int = 1) -> str:
    """The top entries of a profile, paths shortened; times in ms, also per `per` runs."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    index = 3 if sort == "cumulative" else 2
    rows = sorted(raw.items(), key=lambda kv: kv[1][index], reverse=True)[:limit]
    unit = "" if per == 1 else f"/{per}"
    out = [f"{'ncalls':>10} {'tottime ms':>11} {'cumtime ms':>11} {'cum ms' + unit:>12}  "
           "function"]
    for (filename, line, func), (cc, nc, tt, ct, _callers) in rows:
        calls = str(nc) if cc == nc else f"{nc}/{cc}"
        out.append(f"{calls:>10} {tt * 1000:>11.1f} {ct * 1000:>11.1f} "
                   f"{ct * 1000 / per:>12.2f}  {_where(filename, line, func)}")
    return "\n".join(out)


def profile_summary(stats: pstats.Stats, title: str, per: int = 1, limit: int = 20) -> str:
    total = getattr(stats, "total_tt", 0.0)
    head = f"{title}\ntotal {total * 1000:.0f} ms" + (f" over {per} runs" if per > 1 else "")
    return "\n\n".join([
        head,
        "by cumulative time:\n" + profile_table(stats, "cumulative", limit, per),
        "by own time:\n" + profile_table(stats, "tottime", limit, per),
    ])


# environment ---------------------------------------------------------------------------------
def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ without proxies and SMSGW_/XDG_ settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SMSGW_", "XDG_")) and not k.lower().endswith("_proxy")
           and k not in ("PYTHONPATH", "FAKE_TERMUX_DIR")}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env.update(extra or {})
    return env


PYCACHE = Path(tempfile.gettempdir()) / "smsgw-bench-pycache"


def isolate_process_env() -> None:
    """This process talks to 127.0.0.1 directly and never reads the user's smsgw settings.

    Child Pythons (smsgw commands, the fake termux-*) cache their bytecode in PYCACHE even
    when PYTHONDONTWRITEBYTECODE is set, as an installed smsgw has its .pyc files; without
    it every start would compile smsgw from source. The checkout is never written to.
    """
    for key in list(os.environ):
        if key.lower().endswith("_proxy") or key.startswith("SMSGW_"):
            del os.environ[key]
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE)


@contextlib.contextmanager
def fakes_in_process(fake: FakeTermux) -> Iterator[FakeTermux]:
    """Put the fake termux-* first on PATH for this process (TermuxPhone inherits it)."""
    saved = {k: os.environ.get(k) for k in ("PATH", "FAKE_TERMUX_DIR")}
    os.environ["PATH"] = f"{BIN_DIR}{os.pathsep}{saved['PATH'] or ''}"
    os.environ["FAKE_TERMUX_DIR"] = str(fake.dir)
    try:
        yield fake
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wait_until(pred: Callable[[], Any], timeout: float, poll: float = 0.02,
               what: str = "condition") -> Any:
    """Poll `pred` until it returns something true; raise TimeoutError after `timeout` s."""
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


# /proc -----------------------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` itself (not its children), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def proc_status_kb(key: str, pid: int | str = "self") -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# the reference webapp in its own process ---------------------------------------------------
class WebappProcess:
    """`smsgw.testserver.serve` in a subprocess, driven through its control API.

    A separate process keeps its CPU and memory out of the gateway's figures.
    """

    def __init__(self) -> None:
        code = "from smsgw.testserver import serve; serve('127.0.0.1', 0)"
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", code], cwd=SRC,
            env=clean_env({"PYTHONPATH": str(SRC)}), stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if "listening on" not in first:
            self.proc.kill()
            raise RuntimeError(f"the reference webapp did not start: {first!r}")
        self.url = first.rsplit(" ", 1)[1].strip()
        self.base = self.url.split("/smsgateway")[0]
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with self._opener.open(req, timeout=60) as resp:
            return json.loads(resp.read())

    def queue(self, to: str, content: str, id: str | None = None) -> str:
        body = {"to": to, "content": content} | ({"id": id} if id else {})
        return str(self._call("POST", "/api/queue", body)["id"])

    def queue_many(self, n: int, prefix: str = "bench", start: int = 0) -> list[str]:
        return [self.queue(NUMBER, f"{prefix} message {i}", id=f"{prefix}-{i}")
                for i in range(start, start + n)]

    def state(self) -> dict[str, Any]:
        return self._call("GET", "/api/state")  # type: ignore[no-any-return]

    def posts(self) -> int:
        return int(self.state()["counters"]["posts"])

    def reset(self) -> None:
        self._call("POST", "/api/reset", {})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> WebappProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# smsgw as a user runs it -----------------------------------------------------------------------
class SmsgwHome:
    """`smsgw` subprocesses with their own SMSGW_HOME and HOME, fakes first on PATH if given."""

    def __init__(self, root: Path, fake: FakeTermux | None = None) -> None:
        self.home = root / "smsgw-home"
        user_home = root / "user-home"
        self.home.mkdir(parents=True, exist_ok=True)
        user_home.mkdir(parents=True, exist_ok=True)
        extra = {"SMSGW_HOME": str(self.home), "HOME": str(user_home),
                 "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1"}
        if fake is not None:
            extra["PATH"] = f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
            extra["FAKE_TERMUX_DIR"] = str(fake.dir)
        self.env = clean_env(extra)
        self._procs: list[subprocess.Popen[bytes]] = []

    def write_config(self, **settings: Any) -> None:
        (self.home / "config.json").write_text(json.dumps(settings), encoding="utf-8")
        os.chmod(self.home / "config.json", 0o600)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(SMSGW_ARGV + list(args), cwd=SRC, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.home / "daemon.out", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(SMSGW_ARGV + list(args), cwd=SRC, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
        """SIGTERM a daemon we started and wait for it."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        for proc in self._procs:
            self.stop(proc)

    def output(self) -> str:
        path = self.home / "daemon.out"
        return path.read_text(errors="replace") if path.exists() else ""


# phones for in-process runs ------------------------------------------------------------------
class TimedTermuxPhone(TermuxPhone):
    """TermuxPhone that records (command, start, end) of every termux-* call it runs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log: list[tuple[str, float, float]] = []

    def _run(self, args: tuple[str, ...], *, stdin: str | None = None,
             timeout: float) -> str:
        start = time.perf_counter()
        try:
            return super()._run(args, stdin=stdin, timeout=timeout)
        finally:
            self.log.append((args[0], start, time.perf_counter()))

    def time_in(self, name: str | None = None, before: float = math.inf) -> tuple[int, float]:
        """Calls of `name` (all if None) that started before `before`, and their total time."""
        calls = [(s, e) for n, s, e in self.log if (name is None or n == name) and s < before]
        return len(calls), sum(e - s for s, e in calls)


class SimClock:
    """An injected clock that moves only when told to."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class LatentPhone(SimulatedPhone):
    """SimulatedPhone on an injected clock where every call takes `latency` seconds of it,
    like a termux-* command; records when each send reached the phone."""

    def __init__(self, clock: SimClock, latency: float = LATENCY) -> None:
        super().__init__(clock=clock)
        self.sim_clock = clock
        self.latency = latency
        self.send_times: list[datetime] = []
        self.calls = 0

    def _wait(self) -> None:
        self.calls += 1
        self.sim_clock.advance(self.latency)

    def send(self, number: str, text: str) -> None:
        self._wait()
        super().send(number, text)
        self.send_times.append(self.sim_clock())

    def read_inbox(self, position: dict[str, Any] | None,
                   since: datetime | None = None) -> Any:
        self._wait()
        return super().read_inbox(position, since)

    def read_outgoing(self, since: datetime) -> Any:
        self._wait()
        return super().read_outgoing(since)


class StubWebapp:
    """A webapp object without a network: answers every exchange with `offer()`."""

    def __init__(self, offer: Callable[[], list[Any]] | None = None) -> None:
        self.offer = offer or list
        self.exchanges = 0

    def exchange(self, messages: list[dict[str, Any]],
                 updates: list[dict[str, Any]]) -> list[Any]:
        self.exchanges += 1
        return self.offer()


# running one benchmark -------------------------------------------------------------------------
def bench_main(name: str, run: Callable[[bool, Path], Output]) -> None:
    """Command line of one benchmark script: --quick, --json PATH, --keep."""
    ap = argparse.ArgumentParser(description=f"smsgw benchmark: {name}")
    ap.add_argument("--quick", action="store_true", help="shorter smoke run")
    ap.add_argument("--json", type=Path, help="write the output as JSON here (run_all uses it)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    isolate_process_env()
    work = Path(tempfile.mkdtemp(prefix=f"smsgw-bench-{name}-"))
    started = time.perf_counter()
    try:
        out = run(args.quick, work)
    finally:
        if args.keep:
            say(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out.seconds = time.perf_counter() - started
    if args.json:
        args.json.write_text(json.dumps(out.to_json(), indent=1, default=str), encoding="utf-8")
    else:
        print(f"machine: {machine_line(machine_info())}")
        print(table(out.results))
        for title, text in out.profiles.items():
            print(f"\n--- profile: {title} ---\n{text}")


def profile_text(profiler: Any, title: str, per: int = 1, limit: int = 20) -> str:
    """A cProfile.Profile as the summary text stored with the results."""
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    return profile_summary(stats, title, per=per, limit=limit)


def daemon_logging(folder: Path, url: str | None) -> None:
    """Log as `smsgw run` does (INFO to a rotating file), so in-process cycles pay for it."""
    from smsgw.cli import setup_logging
    from smsgw.config import Paths

    setup_logging(Paths(config_dir=folder, data_dir=folder), debug=False, console=False, url=url)
