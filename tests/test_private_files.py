"""A state folder someone else controls: refused; links never followed; files 0600."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from runner import SmsgwRunner

from smsgw.cli import _private_log_handler
from smsgw.testserver import ReferenceWebapp

pytestmark = pytest.mark.usefixtures("no_proxies")
ROOT = os.getuid() == 0


def _configured(tmp_path: Path, webapp: ReferenceWebapp) -> SmsgwRunner:
    smsgw = SmsgwRunner(tmp_path)
    assert smsgw("config", "--url", webapp.url, "--no-check").returncode == 0
    return smsgw


@pytest.mark.skipif(not ROOT, reason="giving a folder to another user needs root")
def test_a_state_folder_of_another_user_is_refused(tmp_path: Path,
                                                   make_webapp: Callable[..., ReferenceWebapp]
                                                   ) -> None:
    smsgw = _configured(tmp_path, make_webapp())
    state = smsgw.home / "state"
    os.chown(state, 65534, 65534)
    for command in (("status",), ("run", "--once", "--phone", "simulated")):
        res = smsgw(*command)
        assert res.returncode != 0
        [line] = res.stderr.strip().splitlines()
        assert "belongs to another user" in line and str(state) in line


def test_a_state_file_others_can_write_is_refused(tmp_path: Path,
                                                 make_webapp: Callable[..., ReferenceWebapp]
                                                 ) -> None:
    smsgw = _configured(tmp_path, make_webapp())
    assert smsgw("status").returncode in (0, 3)
    os.chmod(smsgw.state_file, 0o666)
    res = smsgw("status")
    assert res.returncode != 0
    assert f"chmod 600 {smsgw.state_file}" in res.stderr


def test_a_linked_log_is_refused_and_its_target_untouched(
        tmp_path: Path, make_webapp: Callable[..., ReferenceWebapp]) -> None:
    smsgw = _configured(tmp_path, make_webapp())
    victim = tmp_path / "victims-profile"
    victim.write_text("export PATH=...\n", encoding="utf-8")
    smsgw.log_file.unlink(missing_ok=True)
    smsgw.log_file.symlink_to(victim)
    res = smsgw("run", "--once", "--phone", "simulated")
    assert res.returncode != 0
    assert "is a symbolic link" in res.stderr and "Traceback" not in res.stderr
    assert victim.read_text(encoding="utf-8") == "export PATH=...\n"


def test_a_link_left_for_the_heartbeat_is_not_followed(
        tmp_path: Path, make_webapp: Callable[..., ReferenceWebapp]) -> None:
    smsgw = _configured(tmp_path, make_webapp())
    victim = tmp_path / "victim"
    victim.write_text("keep me\n", encoding="utf-8")
    (smsgw.home / "state").mkdir(exist_ok=True)
    (smsgw.home / "state" / "exchange.tmp").symlink_to(victim)
    res = smsgw("run", "--once", "--phone", "simulated")
    assert res.returncode == 0, res.stderr
    assert victim.read_text(encoding="utf-8") == "keep me\n"
    assert not (smsgw.home / "state" / "exchange.json").is_symlink()


def test_rotated_logs_stay_private_under_umask_022(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        handler = _private_log_handler(tmp_path / "smsgw.log")
        handler.maxBytes = 200
        log = logging.getLogger("test-rotation")
        log.addHandler(handler)
        for n in range(50):
            log.warning("line %d with some text to fill the file", n)
        handler.close()
        log.removeHandler(handler)
    finally:
        os.umask(old)
    files = sorted(tmp_path.glob("smsgw.log*"))
    assert len(files) == 4  # the log and its 3 backups
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), [
        (f.name, oct(f.stat().st_mode)) for f in files]
