"""`smsgw doctor`: each check of the phone set-up, with a timeout, and the fix when it fails."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import Settings, redact_url
from .errors import Error, PhoneError
from .phone import termux

ANDROID_DEFAULT_LIMIT = 30  # SMS parts per 60 s (SmsUsageMonitor)
ANDROID_DEFAULT_INTERVAL_MS = 60_000
WATCHDOG_JOB_ID = 7674  # install.sh registers the watchdog under this id (never two jobs)
WATCHDOG_PERIOD_MS = 900_000  # Android's shortest period for a periodic job
# `Pending Job ID: PATH` then four spaces (Termux:API 0.52+) or a tab (0.51 and older).
JOB_LINE = re.compile(r"^Pending Job (\d+): (.*?)(?:    |\t)(.*)$")
EXEMPT = ("exempt Termux and Termux:API from battery optimisation (Android settings → Apps → "
          "Termux:API → Battery: unrestricted)")
NO_COMMANDS = "skipped: needs the termux-api commands (missing, see above)"


@dataclass
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""
    skipped: bool = False


def skipped(name: str, why: str) -> Check:
    """A check that was not run, and why."""
    return Check(name, True, why, skipped=True)


def boot_script() -> Path:
    return Path(os.environ.get("HOME", str(Path.home()))) / ".termux" / "boot" / "smsgw"


def watchdog_script() -> Path:
    return Path(os.environ.get("HOME", str(Path.home()))) / ".termux" / "watchdog" / \
        "smsgw-watchdog"


def watchdog_command() -> str:
    """The command that registers the watchdog job (what install.sh runs)."""
    # Termux:API's defaults would wait for a battery that is not low and for validated
    # internet; `--network none` would make it unable to list its jobs (Android 9+).
    return (f"termux-job-scheduler --job-id {WATCHDOG_JOB_ID} --script {watchdog_script()} "
            f"--period-ms {WATCHDOG_PERIOD_MS} --persisted true --battery-not-low false "
            "--network any")


def check_commands() -> Check:
    missing = [c for c in ("termux-sms-send", "termux-sms-list") if shutil.which(c) is None]
    if missing:
        return Check("termux-api commands", False, f"missing: {', '.join(missing)}",
                     "pkg install termux-api")
    return Check("termux-api commands", True, "termux-sms-send, termux-sms-list found")


def check_app(timeout: float) -> Check:
    installed = termux.app_installed(timeout)
    if installed is None:
        return Check("Termux:API app", True, "could not ask the package manager (not Android?)")
    if not installed:
        return Check("Termux:API app", False, "com.termux.api is not installed",
                     "install Termux:API from the same source as Termux (F-Droid), open it once")
    return Check("Termux:API app", True, "com.termux.api installed")


def check_permission(timeout: float) -> Check:
    problem = termux.sms_permission_problem(timeout)
    if problem:
        return Check("SMS permission", False, problem,
                     "Android Settings → Apps → Termux:API → Permissions: allow SMS (and "
                     "Contacts), then run smsgw doctor again")
    return Check("SMS permission", True, "termux-sms-list answers with a list")


def check_boot() -> Check:
    script = boot_script()
    if not script.exists():
        return Check("Termux:Boot script", False, f"{script} is missing",
                     "run install.sh again (or copy termux/boot/smsgw there), install "
                     "Termux:Boot from F-Droid and open it once")
    if not os.access(script, os.X_OK):
        return Check("Termux:Boot script", False, f"{script} is not executable",
                     f"chmod +x {script}")
    return Check("Termux:Boot script", True, str(script))


def check_service() -> Check:
    prefix = Path(os.environ.get("PREFIX", "/data/data/com.termux/files/usr"))
    service = prefix / "var" / "service" / "smsgw"
    if not service.exists():
        return Check("runit service", True, "not installed (the boot script runs smsgw itself)")
    if (service / "down").exists():
        return Check("runit service", False, f"{service} is disabled",
                     "sv-enable smsgw (needs `pkg install termux-services`)")
    return Check("runit service", True, f"{service} enabled")


def check_folders() -> Check:
    """The scripts (watchdog, boot, Tasker) get no shell variables: they use the folders
    recorded in ~/.smsgw-folders, or the default ones; say when those are not these."""
    from .config import default_paths, folders_file, recorded_folders

    name = "folders for the scripts"
    here = default_paths()
    here = type(here)(config_dir=here.config_dir.absolute(), data_dir=here.data_dir.absolute())
    followed = recorded_folders()
    if followed != here:
        file = folders_file()
        fix = (f"to make them follow this one, remove {file} and run `smsgw config` here"
               if file.exists() else "run `smsgw config` once in this shell (it records the "
               "folders there)")
        named = [v for v in ("SMSGW_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME")
                 if os.environ.get(v)]
        said = f"{', '.join(named)} set here, but " if named else ""
        return Check(name, False, f"{said}the watchdog, boot and Tasker scripts (which do not "
                     f"get your shell's variables) use {followed.data_dir}, not "
                     f"{here.data_dir}", fix)
    return Check(name, True, f"{here.data_dir}, the folder the scripts use")


def check_wake_lock(timeout: float) -> Check:
    problem = termux.wake_lock(timeout)
    if problem:
        return Check("wake lock", False, problem,
                     "open Termux:API once; allow Termux to ignore battery optimisation")
    return Check("wake lock", True, "termux-wake-lock acquired (the boot script takes it too)")


def check_watchdog(timeout: float) -> Check:
    name = "watchdog job"
    script = watchdog_script()
    if not script.exists():
        return Check(name, False, f"{script} is missing",
                     "run install.sh again: it installs the watchdog and registers its job")
    try:
        out = termux.pending_jobs(timeout)
    except PhoneError as exc:
        return Check(name, False, f"termux-job-scheduler --pending: {exc}",
                     f"open the Termux:API app once, then: {watchdog_command()}")
    if not out.strip():
        # JobSchedulerAPI cannot print a job without a network constraint on Android 9+
        # (getRequiredNetwork() is null): the whole list is lost, and --cancel of such a job
        # crashes the same way before cancelling. Scheduling an id replaces its job.
        return Check(name, False, "termux-job-scheduler --pending printed nothing (a job "
                     "scheduled with `--network none` stops Termux:API from listing jobs)",
                     "schedule that job id again with `--network any` (termux-job-scheduler "
                     "--job-id ID --script ITS_SCRIPT --network any), then cancel it: "
                     "termux-job-scheduler --cancel --job-id ID; if you do not know the id, "
                     "force-stop Termux:API or clear its data (Android settings → Apps → "
                     "Termux:API; this drops all its jobs), then: "
                     f"{watchdog_command()}")
    jobs = {int(m[1]): (m[2], m[3]) for m in map(JOB_LINE.match, out.splitlines()) if m}
    if WATCHDOG_JOB_ID not in jobs:
        return Check(name, False, f"job {WATCHDOG_JOB_ID} is not registered: nothing "
                     "restarts smsgw if it dies", watchdog_command())
    path, constraints = jobs[WATCHDOG_JOB_ID]
    wrong = [what for what, ok in (
        (f"runs {path}, not {script}", path == str(script)),
        ("is not periodic", "(periodic: " in constraints),
        ("does not survive a reboot", "(persisted)" in constraints),
        ("waits while the battery is low (battery not low)",
         "(battery not low)" not in constraints)) if not ok]
    if wrong:
        return Check(name, False, f"job {WATCHDOG_JOB_ID} {', '.join(wrong)}",
                     watchdog_command())
    from .config import default_paths
    from .watchdog import stale

    problem = stale(default_paths().data_dir, time.time())
    if problem:
        return Check(name, False, f"job {WATCHDOG_JOB_ID} is registered but {problem}",
                     f"{EXEMPT}; then: {watchdog_command()}")
    return Check(name, True, f"job {WATCHDOG_JOB_ID} runs {script} about every 15 to 30 min "
                 "(when the phone has a network that reaches the internet), persisted; "
                 f"{EXEMPT} or Android may run it hours late")


def check_webapp(settings: Settings, timeout: float) -> Check:
    if not settings.url:
        return Check("webapp", False, "no URL configured", "smsgw config --url URL")
    from .webapp import WebappClient

    client = WebappClient(settings.url, connect_timeout=min(timeout, settings.connect_timeout),
                          read_timeout=timeout, ca_bundle=settings.ca_bundle)
    try:
        client.handshake()
    except Error as exc:
        return Check("webapp", False, f"{redact_url(settings.url)}: {exc}",
                     "check the URL and credentials: smsgw config --url URL")
    finally:
        client.close()
    return Check("webapp", True, f"{redact_url(settings.url)} answers as a medic-gateway webapp")


def check_rate_limit(settings: Settings, timeout: float) -> Check:
    count = termux.android_setting("sms_outgoing_check_max_count", timeout)
    interval = termux.android_setting("sms_outgoing_check_interval_ms", timeout)
    limit = int(count) if count and count.isdigit() else ANDROID_DEFAULT_LIMIT
    window = int(interval) if interval and interval.isdigit() else ANDROID_DEFAULT_INTERVAL_MS
    per_minute = limit * 60_000 // max(window, 1)
    source = "set" if count and count.isdigit() else "Android's default"
    detail = (f"Android allows {limit} parts per {window // 1000}s ({source}); smsgw sends at "
              f"most {settings.max_parts_per_minute} per minute")
    if settings.max_parts_per_minute > per_minute:
        return Check("sending limit", False, detail,
                     f"either `smsgw config --max-per-minute {per_minute}`, or from a computer: "
                     f"adb shell settings put global sms_outgoing_check_max_count "
                     f"{settings.max_parts_per_minute} && adb shell settings put global "
                     "sms_outgoing_check_interval_ms 60000, then reboot the phone")
    return Check("sending limit", True, detail)


def run_checks(settings: Settings, timeout: float,
               echo: Callable[[str], None] = print) -> bool:
    """Run every check, print ✓/✗ lines with fixes, and each check skipped with why; True
    when all that ran passed."""
    results = [check_commands()]
    phone = results[0].ok  # without the commands, the phone checks would only repeat it
    if phone:
        results += [check_app(timeout), check_permission(timeout), check_wake_lock(timeout)]
    else:
        results += [skipped(n, NO_COMMANDS) for n in ("Termux:API app", "SMS permission",
                                                       "wake lock")]
    results += [check_boot(), check_service()]
    # Only where it matters: a script that runs smsgw without the user's shell installed.
    home = Path(os.environ.get("HOME", str(Path.home())))
    if any(p.exists() for p in (boot_script(), watchdog_script(),
                                home / ".termux" / "tasker" / "smsgw-sms-received")):
        results.append(check_folders())
    results.append(check_webapp(settings, timeout))
    results.append(check_rate_limit(settings, timeout) if phone
                   else skipped("sending limit", NO_COMMANDS))
    results.append(check_watchdog(timeout) if phone else skipped("watchdog job", NO_COMMANDS))
    for r in results:
        mark = "-" if r.skipped else "✓" if r.ok else "✗"
        echo(f"{mark} {r.name}: {r.detail}")
        if not r.ok and r.fix:
            echo(f"    fix: {r.fix}")
    ok = all(r.ok for r in results)
    count = sum(r.skipped for r in results)
    tail = f" ({count} skipped)" if count else ""
    echo(("all checks passed" if ok else "some checks failed: see the fixes above") + tail)
    return ok
