"""The fake `termux-job-scheduler`: the termux-api package's script (bash, GNU getopt) and
the Termux:API app's JobSchedulerAPI over Android's JobScheduler, with the jobs kept in
`jobs.json` in the fake's state folder (see README.md here). Stdlib only."""

from __future__ import annotations

import getopt
import json
import os
import sys
from typing import Any

NAME = "termux-job-scheduler"
JOBS_FILE = "jobs.json"
MIN_PERIOD_MS = 900_000  # Android 7+: JobInfo.getMinPeriodMillis()
RESULT_SUCCESS = 1  # JobScheduler.RESULT_SUCCESS
DEFAULT_SDK = 34
# The script's getopt: -o hs:p and these long options (a trailing "=" takes a value).
SHORT = "hs:p"
LONG = ["script=", "job-id=", "pending", "cancel", "cancel-all", "period-ms=", "network=",
        "battery-not-low=", "storage-not-low=", "charging=", "persisted=", "help",
        "trigger-content-flag=", "trigger-content-uri="]
# The help (-h) in the fake's own words; the real script prints its option list and exits 0.
USAGE = f"""Usage: {NAME} [options]   (fake termux-job-scheduler)
  -p, --pending                 list the pending jobs
  --cancel --job-id ID          cancel one job;  --cancel-all: cancel every job
  -s, --script PATH             the script a job runs (absolute path)
  --job-id ID                   the job's id (default 0; scheduling an id replaces its job)
  --period-ms MS                repeat every MS (at least 900000); 0 runs it once
  --network any|unmetered|cellular|not_roaming|none      (default any)
  --battery-not-low B  --storage-not-low B  --charging B  --persisted B     (booleans)
  --trigger-content-uri URI  --trigger-content-flag N      (passed on, unused by the app)
"""
# Option -> (am extra type, extra name), in the order the script adds them.
EXTRAS = [("script", "es", "script"), ("job-id", "ei", "job_id"), ("pending", "ez", "pending"),
          ("cancel", "ez", "cancel"), ("cancel-all", "ez", "cancel_all"),
          ("period-ms", "ei", "period_ms"), ("network", "es", "network"),
          ("battery-not-low", "ez", "battery_not_low"),
          ("storage-not-low", "ez", "storage_not_low"), ("charging", "ez", "charging"),
          ("persisted", "ez", "persisted"), ("trigger-content-uri", "es", "trigger_content_uri"),
          ("trigger-content-flag", "ez", "trigger_content_flag")]
NETWORKS = {"any": "ANY", "unmetered": "UNMETERED", "cellular": "CELLULAR",
            "not_roaming": "NOT_ROAMING", "none": "NONE"}


class Unprintable(Exception):
    """formatJobInfo throws (a job without a network on Android 9+: getRequiredNetwork() is
    null): the app prints nothing for that answer."""


def _gnu_error(exc: getopt.GetoptError) -> str:
    """util-linux getopt's words for what Python's getopt refused."""
    opt = exc.opt
    msg = exc.msg
    dashes = "--" if len(opt) > 1 else "-"
    if "requires argument" in msg:
        return (f"option '--{opt}' requires an argument" if dashes == "--"
                else f"option requires an argument -- '{opt}'")
    if "must not have an argument" in msg:
        return f"option '--{opt}' doesn't allow an argument"
    if "not a unique prefix" in msg:
        found = " ".join(f"'--{o.rstrip('=')}'" for o in LONG if o.startswith(opt))
        return f"option '--{opt}' is ambiguous; possibilities: {found}"
    return f"unrecognized option '--{opt}'" if dashes == "--" else f"invalid option -- '{opt}'"


def parse_script(argv: list[str]) -> dict[str, str] | int:
    """The script: its options (the last of each wins), or its exit status after printing
    what it prints (help, a getopt error, too many arguments)."""
    try:
        opts, rest = getopt.gnu_getopt(argv, SHORT, LONG)
    except getopt.GetoptError as exc:
        sys.stderr.write(f"{NAME}: {_gnu_error(exc)}\n")
        return 1  # set -e: the failed getopt in TEMP=`...` ends the script
    found: dict[str, str] = {}
    for opt, value in opts:
        name = opt.lstrip("-")
        name = {"s": "script", "p": "pending", "h": "help"}.get(name, name)
        if name == "help":
            sys.stdout.write(USAGE)
            return 0
        found[name] = "1" if name in ("pending", "cancel", "cancel-all") else value
    if rest:
        sys.stdout.write(f"{NAME}: too many arguments\n")
        return 1
    # `[ -n "$OPT_X" ]`: an empty value adds no extra.
    return {k: v for k, v in found.items() if v != ""}


def am_bool(value: str) -> bool | None:
    """`am`'s --ez: true/t/false/f (any case) or a number (Integer.decode, non-zero)."""
    from provider import java_decode

    low = value.lower()
    if low in ("true", "t"):
        return True
    if low in ("false", "f"):
        return False
    number = java_decode(low)
    return None if number is None else number != 0


def am_extras(options: dict[str, str]) -> dict[str, Any] | str:
    """The intent's extras `am broadcast` builds, or why `am` refuses them."""
    from provider import java_decode

    extras: dict[str, Any] = {}
    for option, kind, name in EXTRAS:
        if option not in options:
            continue
        value = options[option]
        if kind == "ei":
            number = java_decode(value)
            if number is None:
                return f'java.lang.NumberFormatException: For input string: "{value}"'
            extras[name] = number
        elif kind == "ez":
            flag = am_bool(value)
            if flag is None:
                return f"java.lang.IllegalArgumentException: Invalid boolean value: {value}"
            extras[name] = flag
        else:
            extras[name] = value
    return extras


class Jobs:
    """Android's JobScheduler for the Termux:API app: pending jobs by id, in a file."""

    def __init__(self, p: Any) -> None:
        self.p = p
        self.path = p.root / JOBS_FILE

    def load(self) -> dict[int, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return {int(k): v for k, v in data.items()}

    def save(self, jobs: dict[int, dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in sorted(jobs.items())}, indent=1),
                       encoding="utf-8")
        os.replace(tmp, self.path)


def describe(job_id: int, job: dict[str, Any], sdk: int, old: bool = False) -> str:
    """formatJobInfo: `Job ID: PATH    (periodic: Nms) (persisted) ...` (a tab after the
    path before Termux:API 0.52: `old`)."""
    parts = []
    if job["period_ms"] > 0:
        parts.append(f"(periodic: {max(job['period_ms'], MIN_PERIOD_MS)}ms)")
    if job["charging"]:
        parts.append("(while charging)")
    if job["idle"]:
        parts.append("(while idle)")
    if job["persisted"]:
        parts.append("(persisted)")
    if sdk >= 26:
        if job["battery_not_low"]:
            parts.append("(battery not low)")
        if job["storage_not_low"]:
            parts.append("(storage not low)")
    if sdk >= 28:
        network = job["network"]
        if network == "NONE":
            raise Unprintable
        # NetworkRequest.toString(); the capability list varies with the Android version
        # (a stand-in: nobody should parse it).
        caps = {"ANY": "", "UNMETERED": "&NOT_METERED", "NOT_ROAMING": "&NOT_ROAMING",
                "CELLULAR": ""}[network]
        transports = " Transports: CELLULAR" if network == "CELLULAR" else ""
        parts.append(f"(network: NetworkRequest [ NONE id=0, [{transports} Capabilities: "
                     f"INTERNET&NOT_RESTRICTED&TRUSTED&NOT_VPN{caps}] ])")
    gap = "\t" if old else "    "
    return f"Job {job_id}: {job['script']}{gap}{' '.join(parts)}"


def app(p: Any, extras: dict[str, Any], modes: dict[str, Any]) -> None:
    """JobSchedulerAPI.onReceive: pending, else cancel-all, else cancel, else schedule.
    Before app 0.52: a tab in a job's line, `No pending jobs` for an empty list, and of the
    two answers to scheduling only the first reaches the command (the other becomes a
    "Termux:API Error" notification)."""
    from provider import versions

    sdk = int(modes.get("android_sdk", DEFAULT_SDK))
    old = versions(modes)[1] < (0, 52)
    store = Jobs(p)
    out: list[str] = []

    def listing(jobs: dict[int, dict[str, Any]], label: str) -> None:
        if not jobs:
            out.append("No pending jobs" if old and label == "Pending" else "No jobs found")
            return
        # One message for all: a job that cannot be printed loses the whole answer.
        out.append("\n".join(f"{label} {describe(i, j, sdk, old)}"
                             for i, j in sorted(jobs.items())))

    with p.locked():
        jobs = store.load()
        try:
            if extras.get("pending"):
                listing(jobs, "Pending")
            elif extras.get("cancel_all"):
                listing(jobs, "Cancelling")
                store.save({})
            elif extras.get("cancel"):
                if "job_id" not in extras:
                    out.append("Job id not passed")
                elif extras["job_id"] not in jobs:
                    out.append(f"No job {extras['job_id']} found")
                else:
                    job_id = extras["job_id"]
                    out.append(f"Cancelling {describe(job_id, jobs[job_id], sdk, old)}")
                    del jobs[job_id]
                    store.save(jobs)
            else:
                schedule(store, jobs, extras, sdk, out, old)
        except Unprintable:
            pass  # the answer is lost; what was done before the throw stays done
    sys.stdout.write("".join(line + "\n" for line in out))


def schedule(store: Jobs, jobs: dict[int, dict[str, Any]], extras: dict[str, Any], sdk: int,
             out: list[str], old: bool = False) -> None:
    """runScheduleJobAction: check the script, replace any job of the same id."""
    script = extras.get("script")
    if script is None:
        out.append("No script path given")
        return
    # new File(path) in the app, whose working folder is "/".
    path = os.path.join("/", script)
    if not os.path.isfile(path):
        out.append(f"No such file: {script}")
        return
    if not os.access(path, os.R_OK):
        out.append(f"Cannot read file: {script}")
        return
    if not os.access(path, os.X_OK):
        out.append(f"Cannot execute file: {script}")
        return
    network = extras.get("network")
    job_id = extras.get("job_id", 0)
    job = {"script": os.path.abspath(path),
           "network": "ANY" if network is None else NETWORKS.get(network, "NONE"),
           "period_ms": max(0, extras.get("period_ms", 0)),
           "battery_not_low": extras.get("battery_not_low", True),
           "charging": extras.get("charging", False),
           "persisted": extras.get("persisted", False),
           "idle": False,
           "storage_not_low": extras.get("storage_not_low", False)}
    jobs[job_id] = job  # JobScheduler.schedule() replaces a job with the same id
    store.save(jobs)
    out.append(f"Scheduling {describe(job_id, job, sdk, old)} - response {RESULT_SUCCESS}")
    if not old:
        out.append(f"Pending {describe(job_id, job, sdk)}")


def main(p: Any, call: Any, argv: list[str], modes: dict[str, Any]) -> int:
    """The whole command: script, `am broadcast`, the app."""
    options = parse_script(argv)
    if isinstance(options, int):
        call.log()
        return options
    extras = am_extras(options)
    call.broadcast(modes, am_error=extras if isinstance(extras, str) else None)
    assert not isinstance(extras, str)
    call.log()
    app(p, extras, modes)
    return 0
