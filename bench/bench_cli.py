"""Figure 6: CLI start-up of `smsgw status` and `smsgw --help` against `python -c pass`.

Each command runs as the console script does (`from smsgw.cli import main; main()`), in
a fresh interpreter, with its own SMSGW_HOME holding a configured URL and a state, and
its bytecode cached (as after `pip install`); 6.5 shows `status` without that cache. The
median of RUNS runs each (after one untimed run); then which heavy modules `smsgw status`
imports, and its slowest imports from `python -X importtime`.
"""

from __future__ import annotations

import pstats
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    SMSGW_ARGV,
    SRC,
    Output,
    SmsgwHome,
    bench_main,
    median,
    profile_summary,
    say,
)

HEAVY = ("requests", "urllib3", "tinydb", "schedule", "gsm0338", "smsgw.webapp",
         "smsgw.gateway", "smsgw.daemon")
PROBE = """
import sys
from smsgw.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = HEAVY_NAMES
print("MODULES " + " ".join(sorted({m for m in sys.modules for h in heavy
                                     if m == h or m.startswith(h + ".")})), file=sys.stderr)
""".replace("HEAVY_NAMES", repr(HEAVY))


def timed(commands: dict[str, tuple[list[str], dict[str, str]]],
          runs: int) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU (user + system, from RUSAGE_CHILDREN) seconds of each command, run
    round-robin after one untimed run each, so the machine's load hits all alike."""
    for argv, env in commands.values():
        subprocess.run(argv, cwd=SRC, env=env, capture_output=True, timeout=60)
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in commands}
    for _ in range(runs):
        for name, (argv, env) in commands.items():
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(argv, cwd=SRC, env=env, capture_output=True, timeout=60)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return times


def imports_of(env: dict[str, str], *args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=SRC, env=env,
                          capture_output=True, text=True, timeout=60)
    for line in done.stderr.splitlines():
        if line.startswith("MODULES"):
            return line.split()[1:]
    raise RuntimeError(f"probe failed: {done.stderr.strip()[-500:]}")


def importtime(env: dict[str, str], *args: str, top: int = 25) -> tuple[float, str]:
    """Total import time (s) of the command and its slowest top-level imports."""
    done = subprocess.run([sys.executable, "-X", "importtime", *SMSGW_ARGV[1:], *args],
                          cwd=SRC, env=env, capture_output=True, text=True, timeout=60)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = line[len("import time:"):].split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        rows.append((int(cumulative), int(self_us), depth, name.strip()))
    total = sum(c for c, _, depth, _ in rows if depth == 0) / 1e6
    lines = [f"{'cumulative ms':>14} {'self ms':>8}  module (indented by import depth)"]
    for c, s, depth, n in sorted(rows, reverse=True)[:top]:
        lines.append(f"{c / 1000:>14.1f} {s / 1000:>8.1f}  {'  ' * depth}{n}")
    return total, "\n".join(lines)


def run(quick: bool, work: Path) -> Output:
    out = Output("cli")
    runs = 5 if quick else 15
    home = SmsgwHome(work / "cli")
    home.write_config(url="https://user:pass@example.org/sms/?key=abc", interval=60)
    home.run("status")  # creates the state folder
    env = home.env
    bare = {k: v for k, v in env.items() if k != "PYTHONPYCACHEPREFIX"}
    bare["PYTHONDONTWRITEBYTECODE"] = "1"
    say(f"6. start-up: {runs} rounds of each command, interleaved")
    t = timed({"python -c pass": ([sys.executable, "-c", "pass"], env),
               "status": (SMSGW_ARGV + ["status"], env),
               "--help": (SMSGW_ARGV + ["--help"], env),
               "hook": (SMSGW_ARGV + ["hook"], env),
               "status, no bytecode cache": (SMSGW_ARGV + ["status"], bare)}, runs)
    wall = {k: median(v["wall"]) for k, v in t.items()}
    cpu = {k: median(v["cpu"]) for k, v in t.items()}
    out.data["medians"] = {"wall": wall, "cpu": cpu}
    base, base_cpu = wall["python -c pass"], cpu["python -c pass"]

    def row(key: str, name: str, label: str, target: str, check: bool) -> None:
        ratio = wall[name] / base
        out.add(key, f"cli: {label} / `python -c pass`", ratio, "x", target,
                (ratio <= 3) if check else None,
                note=f"{wall[name] * 1000:.0f} ms vs {base * 1000:.0f} ms (wall medians); "
                     f"CPU {cpu[name] * 1000:.0f} vs {base_cpu * 1000:.0f} ms = "
                     f"{cpu[name] / base_cpu:.1f}x")

    row("6.1", "status", "`smsgw status`", "<= 3", True)
    row("6.2", "--help", "`smsgw --help`", "<= 3", True)
    row("6.3", "hook", "`smsgw hook` (no daemon)", "(info)", False)
    row("6.5", "status, no bytecode cache", "`smsgw status` without .pyc", "(info)", False)
    mods = imports_of(env, "status")
    requests_in = any(m == "requests" or m.startswith("requests.") for m in mods)
    out.add("6.4", "cli: `smsgw status` imports requests", "yes" if requests_in else "no", "",
            "no", not requests_in,
            note="heavy modules loaded: " + (", ".join(m for m in mods if m.count(".") < 1
                                                       or m.startswith("smsgw.")) or "none"))
    total, text = importtime(env, "status")
    out.profiles["cli: `smsgw status` imports (python -X importtime)"] = (
        f"sum of top-level imports {total * 1000:.0f} ms\n{text}")
    prof_file = work / "status.prof"
    code = ("import cProfile, sys\n"
            "from smsgw.cli import main\n"  # noqa: ISC003 - one program text
            "def status():\n"
            "    try:\n"
            "        main(['status'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            f"cProfile.run('status()', {str(prof_file)!r})\n")
    subprocess.run([sys.executable, "-c", code], cwd=SRC, env=env, capture_output=True,
                   timeout=60)
    if prof_file.exists():
        out.profiles["cli: `smsgw status` after its imports (cProfile)"] = profile_summary(
            pstats.Stats(str(prof_file)), "`smsgw status` run in-process, imports of "
            "smsgw.cli excluded (they are in the importtime profile)", limit=25)
    help_mods = imports_of(env, "--help")
    out.data["imports"] = {"status": mods, "--help": help_mods}
    return out


if __name__ == "__main__":
    bench_main("cli", run)
