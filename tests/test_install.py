"""install.sh in a fake Termux: a venv as $PREFIX, a fake `pkg`, HOME in a temporary folder.

This is the slow file: it pip-installs smsgw (from a copy of this checkout, so the build
leaves nothing in the repository) once, then runs the installer a second time. pip needs
its package index (PyPI, or whatever pip is configured with).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeTermux as FakePhone

from smsgw import __version__

REPO = Path(__file__).resolve().parent.parent
INSTALL_SH = REPO / "install.sh"
DASH = shutil.which("dash")
INSTALL_TIMEOUT = 540  # seconds: pip may download the dependencies and build tools
SCRIPTS = {  # installed path (relative to HOME or $PREFIX) -> file in this checkout
    "home/.termux/boot/smsgw": "termux/boot/smsgw",
    "home/.termux/tasker/smsgw-sms-received": "termux/tasker/smsgw-sms-received",
    "prefix/var/service/smsgw/run": "termux/service/smsgw/run",
    "home/.termux/watchdog/smsgw-watchdog": "termux/watchdog/smsgw-watchdog",
}
TERMUX_API_STUBS = ("termux-sms-send", "termux-sms-list", "termux-wake-lock")
EDITED = "#!/data/data/com.termux/files/usr/bin/sh\n# my own boot script\nsmsgw run --interval 30\n"

# The pip install may take minutes on a slow network.
pytestmark = pytest.mark.timeout(600)

Snapshot = dict[str, tuple[Any, ...]]


def install_environ(**extra: str) -> dict[str, str]:
    """os.environ for the installer: pip's own settings and proxies stay; nothing of smsgw,
    of Termux or of this test run's Python leaks in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SMSGW_", "XDG_", "PYTHON", "TERMUX_"))
           and k not in ("VIRTUAL_ENV", "PREFIX", "FAKE_TERMUX_DIR")}
    env.update(extra)
    return env


def snapshot(*roots: Path) -> Snapshot:
    """Every path under `roots`: kind, permission bits, and the content or link target."""
    found: Snapshot = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in sorted(dirnames + filenames):
                path = Path(dirpath) / name
                st = path.lstat()
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISLNK(st.st_mode):
                    found[str(path)] = ("link", os.readlink(path))
                elif stat.S_ISDIR(st.st_mode):
                    found[str(path)] = ("dir", mode)
                else:
                    found[str(path)] = ("file", mode, path.read_bytes())
    return found


@dataclass
class FakeTermux:
    """The folders of a fake Termux and how to run the installer in it."""

    root: Path
    prefix: Path
    home: Path
    bin: Path
    source: Path
    pkg_log: Path
    phone: FakePhone  # the fake Termux:API app: termux-job-scheduler's jobs

    @property
    def env(self) -> dict[str, str]:
        return install_environ(
            HOME=str(self.home), PATH=f"{self.bin}{os.pathsep}/usr/bin{os.pathsep}/bin",
            FAKE_TERMUX_DIR=str(self.phone.dir),
            SMSGW_PREFIX=str(self.prefix), SMSGW_SOURCE=str(self.source),
            # pip's cache outside HOME, so HOME holds only what the installer put there.
            PIP_CACHE_DIR=str(self.root / "pip-cache"))

    def install(self, shell: str, piped: bool = False) -> subprocess.CompletedProcess[str]:
        """Run install.sh with `shell`, as a file or (`piped`) on its stdin."""
        if piped:
            return subprocess.run([shell], input=INSTALL_SH.read_text(encoding="utf-8"),
                                  env=self.env, cwd=self.root, capture_output=True, text=True,
                                  timeout=INSTALL_TIMEOUT)
        return subprocess.run([shell, str(INSTALL_SH)], env=self.env, cwd=self.root,
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                              stdin=subprocess.DEVNULL)

    def pkg_calls(self) -> list[str]:
        if not self.pkg_log.exists():
            return []
        return self.pkg_log.read_text(encoding="utf-8").splitlines()

    def state(self) -> Snapshot:
        return snapshot(self.home, self.prefix / "var", self.prefix / "share" / "smsgw")

    def path(self, key: str) -> Path:
        where, _, rest = key.partition("/")
        return (self.home if where == "home" else self.prefix) / rest


def make_fake_termux(root: Path) -> FakeTermux:
    root.mkdir(parents=True, exist_ok=True)
    source = root / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".venv",
        ".ruff_cache", ".hypothesis"))
    prefix = root / "usr"
    subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True, timeout=300,
                   env=install_environ())
    home = root / "home"
    home.mkdir()
    bin_dir = root / "bin"
    bin_dir.mkdir()
    pkg_log = root / "pkg.log"
    stubs = " ".join(TERMUX_API_STUBS)
    # Like Termux's pkg: installing termux-api puts its commands in $PREFIX/bin.
    pkg = bin_dir / "pkg"
    pkg.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> "{pkg_log}"\n'
        'case " $* " in *" termux-api "*)\n'
        f'    for name in {stubs}; do\n'
        '        printf "#!/bin/sh\\nexit 0\\n" > "$PREFIX/bin/$name"\n'
        '        chmod 755 "$PREFIX/bin/$name"\n'
        "    done\n"
        '    printf "#!/bin/sh\\nexec %s \\"\\$@\\"\\n" '
        f'"{FakePhone.bin_dir / "termux-job-scheduler"}" > "$PREFIX/bin/termux-job-scheduler"\n'
        '    chmod 755 "$PREFIX/bin/termux-job-scheduler";;\n'
        "esac\n", encoding="utf-8")
    pkg.chmod(0o755)
    return FakeTermux(root, prefix, home, bin_dir, source, pkg_log, FakePhone(root / "phone"))


@dataclass
class Installed:
    fake: FakeTermux
    first: subprocess.CompletedProcess[str]
    first_state: Snapshot
    first_pkg_calls: list[str]
    first_jobs: dict[int, dict[str, Any]]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The first install, with dash (Termux's sh) when there is one."""
    fake = make_fake_termux(tmp_path_factory.mktemp("termux"))
    for name in TERMUX_API_STUBS:
        assert shutil.which(name, path=fake.env["PATH"]) is None, name
    first = fake.install(DASH or "sh")
    return Installed(fake, first, fake.state(), fake.pkg_calls(), fake.phone.jobs())


@dataclass
class Reinstalled:
    before: Snapshot
    second: subprocess.CompletedProcess[str]
    after: Snapshot
    pkg_calls: list[str]
    jobs: dict[int, dict[str, Any]]
    job_calls: list[list[str]]


@pytest.fixture(scope="module")
def reinstalled(installed: Installed) -> Reinstalled:
    """The installer run again, piped into sh as README's `curl ... | sh` does, after the
    user edited the boot script and enabled the service (`sv-enable` removes `down`)."""
    fake = installed.fake
    assert installed.first.returncode == 0, installed.first.stderr
    fake.path("home/.termux/boot/smsgw").write_text(EDITED, encoding="utf-8")
    fake.path("prefix/var/service/smsgw/down").unlink()
    before = fake.state()
    fake.phone.reset_calls()
    # An older Termux:API app (0.51): it answers scheduling with a `Scheduling Job` line only.
    fake.phone.set_mode(app_version="0.51")
    second = fake.install("sh", piped=True)
    return Reinstalled(before, second, fake.state(), fake.pkg_calls(), fake.phone.jobs(),
                       [c["argv"] for c in fake.phone.calls("termux-job-scheduler")])


# the first install -----------------------------------------------------------------------
def test_install_sh_parses_with_dash() -> None:
    if DASH is None:
        pytest.skip("dash (Termux's sh) is not installed")
    proc = subprocess.run([DASH, "-n", str(INSTALL_SH)], capture_output=True, text=True,
                          timeout=10)
    assert proc.returncode == 0, proc.stderr


def test_first_install_succeeds(installed: Installed) -> None:
    proc = installed.first
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smsgw is installed" in proc.stdout


def test_first_install_asks_pkg_only_for_what_is_missing(installed: Installed) -> None:
    # python and pip are in the venv ($PREFIX/bin); only termux-api is missing.
    assert installed.first_pkg_calls == ["install -y termux-api"], installed.first_pkg_calls
    assert "installing packages: termux-api" in installed.first.stdout


def test_installed_smsgw_runs_from_prefix(installed: Installed, tmp_path: Path) -> None:
    fake = installed.fake
    env = install_environ(HOME=str(fake.home), PATH=f"{fake.prefix / 'bin'}:/usr/bin:/bin")
    proc = subprocess.run([str(fake.prefix / "bin" / "smsgw"), "--version"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"smsgw, version {__version__}"
    where = subprocess.run([str(fake.prefix / "bin" / "python"), "-c",
                            "import smsgw; print(smsgw.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(fake.prefix), where.stdout  # not the repo


@pytest.mark.parametrize("installed_as, original", sorted(SCRIPTS.items()))
def test_first_install_puts_the_termux_scripts(installed: Installed, installed_as: str,
                                               original: str) -> None:
    path = installed.fake.path(installed_as)
    entry = installed.first_state.get(str(path))
    assert entry is not None, f"{path} was not installed"
    kind, mode, content = entry
    assert kind == "file"
    assert content == (REPO / original).read_bytes()
    assert mode & stat.S_IXUSR, oct(mode)
    assert f"installed {path}" in installed.first.stdout


def test_first_install_sets_up_the_runit_service_disabled(installed: Installed) -> None:
    fake = installed.fake
    service = fake.prefix / "var" / "service" / "smsgw"
    state = installed.first_state
    assert state[str(service / "log")][0] == "dir"
    assert state[str(service / "log" / "run")] == (
        "link", str(fake.prefix / "share" / "termux-services" / "svlogger"))
    kind, _, content = state[str(service / "down")]
    assert kind == "file" and content == b""


def test_first_install_shows_the_next_steps(installed: Installed) -> None:
    out = installed.first.stdout
    for step in ("Termux:API", "Termux:Boot", "smsgw doctor", "smsgw config --url",
                 "sv-enable smsgw"):
        assert step in out, step


def test_first_install_registers_the_watchdog_job(installed: Installed) -> None:
    watchdog = installed.fake.path("home/.termux/watchdog/smsgw-watchdog")
    jobs = installed.first_jobs
    assert list(jobs) == [7674], jobs
    job = jobs[7674]
    assert job["script"] == str(watchdog)
    assert job["period_ms"] == 900_000 and job["persisted"] is True
    # Not Termux:API's defaults (battery not low, validated internet): the watchdog must
    # also run on a low battery.
    assert job["battery_not_low"] is False and job["network"] == "ANY"
    assert "registered the watchdog (termux-job-scheduler job 7674" in installed.first.stdout
    assert "about every 15 to 30 minutes" in installed.first.stdout
    assert "battery optimisation" in installed.first.stdout


# running it again --------------------------------------------------------------------------
def test_second_run_changes_nothing_but_keeps_the_edited_files(
        installed: Installed, reinstalled: Reinstalled) -> None:
    proc = reinstalled.second
    assert proc.returncode == 0, proc.stdout + proc.stderr
    boot = installed.fake.path("home/.termux/boot/smsgw")
    new = Path(f"{boot}.new")
    assert boot.read_text(encoding="utf-8") == EDITED  # the user's version is kept
    assert f"kept your {boot}" in proc.stdout and str(new) in proc.stdout
    assert new.read_bytes() == (REPO / "termux" / "boot" / "smsgw").read_bytes()
    assert os.access(new, os.X_OK)

    added = {p: v for p, v in reinstalled.after.items() if p not in reinstalled.before}
    assert set(added) == {str(new)}, sorted(added)
    changed = [p for p, v in reinstalled.before.items() if reinstalled.after.get(p) != v]
    assert changed == [], changed  # identical files untouched, the edited one kept
    # The service the user enabled stays enabled: no new `down` file.
    assert str(installed.fake.path("prefix/var/service/smsgw/down")) not in added
    assert "installed " not in proc.stdout


def test_second_run_keeps_one_watchdog_job(installed: Installed,
                                          reinstalled: Reinstalled) -> None:
    assert reinstalled.jobs == installed.first_jobs  # the same one job, not a second
    # Scheduled again on every run (a listed job may never run, e.g. one made by an older
    # Termux:API): the same id replaces it. This was `[["--pending"]]` (listed, kept)
    # before reality.md item 4.
    assert reinstalled.job_calls == [[
        "--job-id", "7674", "--script",
        str(installed.fake.path("home/.termux/watchdog/smsgw-watchdog")), "--period-ms",
        "900000", "--persisted", "true", "--battery-not-low", "false", "--network", "any"]]
    # The app (0.51 here) printed only `Scheduling Job 7674: ...<TAB>... - response 1`.
    assert "registered the watchdog" in reinstalled.second.stdout
    assert "could not register" not in reinstalled.second.stdout


def test_second_run_does_not_call_pkg_again(installed: Installed,
                                            reinstalled: Reinstalled) -> None:
    assert reinstalled.pkg_calls == installed.first_pkg_calls  # no new call
    assert "already installed" in reinstalled.second.stdout


# refusals --------------------------------------------------------------------------------
def refusal_fake(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """HOME, a bin dir whose pkg/python/pip record any call, and the environment."""
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for name in ("pkg", "python", "python3", "pip", "pip3"):
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n', encoding="utf-8")
        exe.chmod(0o755)
    env = install_environ(HOME=str(home), PATH=f"{bin_dir}:/usr/bin:/bin",
                          SMSGW_SOURCE=str(REPO))
    return home, calls, env


@pytest.mark.parametrize("shell", ["sh", "dash"])
def test_refuses_outside_termux(tmp_path: Path, shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    if Path("/data/data/com.termux").exists():
        pytest.skip("this is a Termux")
    home, calls, env = refusal_fake(tmp_path)
    proc = subprocess.run([shell, str(INSTALL_SH)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "this is not Termux" in proc.stderr
    assert "SMSGW_PREFIX" in proc.stderr and "smsgw demo" in proc.stderr
    assert "installing" not in proc.stdout
    assert list(home.iterdir()) == []
    assert not calls.exists(), calls.read_text(encoding="utf-8")


def test_refuses_without_home(tmp_path: Path) -> None:
    home, calls, env = refusal_fake(tmp_path)
    del env["HOME"]
    env["SMSGW_PREFIX"] = str(tmp_path / "usr")
    proc = subprocess.run(["sh", str(INSTALL_SH)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "HOME is not set" in proc.stderr
    assert not calls.exists()
    assert not (tmp_path / "usr").exists()
