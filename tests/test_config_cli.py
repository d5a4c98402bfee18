"""`smsgw config` as a user runs it: settings checked at the door, the URL without argv."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from runner import REPO, SmsgwRunner

from smsgw.testserver import ReferenceWebapp

pytestmark = pytest.mark.usefixtures("no_proxies")


@pytest.mark.parametrize("content, words", [
    ('{"url": 5}', '"url" must be a webapp URL (text), or null'),  # the value is not shown
    ('{"interval": "abc"}', '"interval" must be a whole number from 1 to 86400 (got "abc")'),
    ('{"interval": 0}', '"interval" must be a whole number from 1 to 86400 (got 0)'),
])
@pytest.mark.parametrize("command", [("status",), ("config",), ("run", "--once"),
                                     ("messages",)])
def test_a_config_file_of_the_wrong_shape_is_one_line_and_kept(
        tmp_path: Path, content: str, words: str, command: tuple[str, ...]) -> None:
    smsgw = SmsgwRunner(tmp_path)
    smsgw.home.mkdir(parents=True)
    smsgw.config_file.write_text(content, encoding="utf-8")
    res = smsgw(*command)
    assert res.returncode != 0
    [line] = res.stderr.strip().splitlines()
    assert line == (f"smsgw: error: the settings in {smsgw.config_file} are invalid: {words}; "
                    "fix or remove that file")
    assert smsgw.config_file.read_text(encoding="utf-8") == content


def test_smsgw_url_is_refused_naming_the_variable(tmp_path: Path) -> None:
    res = SmsgwRunner(tmp_path)("status", env={"SMSGW_URL": "ftp://nope/"})
    assert res.returncode != 0
    assert res.stderr.strip() == ("smsgw: error: SMSGW_URL is not a usable webapp URL: the URL "
                                  "must start with http:// or https://")


@pytest.mark.parametrize("option, value, words", [
    ("--interval", "0", "--interval must be a whole number from 1 to 86400 (got 0)"),
    ("--max-parts", "101", "--max-parts must be a whole number from 1 to 100 (got 101)"),
    ("--exchange-deadline", "1s", "--exchange-deadline must be a number of seconds from 5 to 3600"),
])
def test_options_take_the_same_bounds(tmp_path: Path, option: str, value: str,
                                      words: str) -> None:
    smsgw = SmsgwRunner(tmp_path)
    res = smsgw("config", option, value)
    assert res.returncode != 0
    assert res.stderr.startswith(f"smsgw: error: {words}"), res.stderr
    assert not smsgw.config_file.exists()


def test_url_from_a_file_keeps_the_password_out_of_ps(tmp_path: Path,
                                                      make_webapp: Callable[..., ReferenceWebapp]
                                                      ) -> None:
    webapp = make_webapp(username="gw", password="s3cr3t-pw")
    smsgw = SmsgwRunner(tmp_path)
    url_file = tmp_path / "url.txt"
    url_file.write_text(webapp.url + "\n", encoding="utf-8")
    os.chmod(url_file, 0o644)
    res = smsgw("config", "--url-file", str(url_file))
    assert res.returncode != 0 and "chmod 600" in res.stderr
    os.chmod(url_file, 0o600)
    proc = subprocess.Popen(smsgw.argv + ["config", "--url-file", str(url_file)], cwd=REPO,
                            env=smsgw.environ(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes()  # what `ps` shows
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"s3cr3t-pw" not in argv
    assert "s3cr3t-pw" not in out + err
    assert json.loads(smsgw.config_file.read_text())["url"] == webapp.url


def test_url_from_standard_input(tmp_path: Path,
                                 make_webapp: Callable[..., ReferenceWebapp]) -> None:
    webapp = make_webapp(username="gw", password="s3cr3t-pw")
    smsgw = SmsgwRunner(tmp_path)
    proc = subprocess.run(smsgw.argv + ["config", "--url", "-"], cwd=REPO, env=smsgw.environ(),
                          input=webapp.url + "\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "s3cr3t-pw" not in proc.stdout + proc.stderr
    assert json.loads(smsgw.config_file.read_text())["url"] == webapp.url
