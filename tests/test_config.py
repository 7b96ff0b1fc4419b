"""Bad configurations: one message naming file, key and line; exit status 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from interlook_core.config import load_config
from interlook_core.errors import ConfigError

GOOD = """\
core:
  workflowSteps: provider.file,ipam.file
  checkFlowInterval: 500ms
provider:
  file: {path: ./services.yml}
ipam:
  file: {network_cidr: 10.32.30.0/24, db_file: ./var/ipam.json}
"""


def check(tmp_path, text):
    path = tmp_path / "interlook.yml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "interlook_core.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, path


def test_a_good_config_passes_and_relative_paths_follow_the_file(tmp_path):
    result, path = check(tmp_path, GOOD)
    assert result.returncode == 0, result.stderr
    config = load_config(path)
    assert config.core.checkFlowInterval == 0.5
    assert config.core.workflowEntriesFile == str(tmp_path / "var/entries.db")
    assert config.core.workflowSteps == ("provider.file", "ipam.file")


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            GOOD.replace("  checkFlowInterval", "  checkFlowIntervall"),
            ":3:",
            "core.checkFlowIntervall: unknown key",
        ),
        (
            GOOD.replace("500ms", "5 minutes"),
            ":3:",
            "core.checkFlowInterval: '5 minutes' is not a duration",
        ),
        (GOOD.replace("500ms", "500"), ":3:", "is not a duration"),
        (
            GOOD.replace("provider.file,ipam.file", "provider.file,ipam.nothere"),
            ":2:",
            "'ipam.nothere' names no installed extension",
        ),
        (
            GOOD.replace("provider.file,ipam.file", "ipam.file,provider.file"),
            ":2:",
            "the first step must be a provider",
        ),
        (
            "core:\n  workflowSteps: provider.file,ipam.file\n  listenPort: eighty\n",
            ":3:",
            "core.listenPort: Input should be a valid integer",
        ),
        (
            "core:\n  workflowSteps: provider.file,ipam.file\nprovider:\n  file: {path: x}\n",
            ":",
            "ipam.file: section is missing; ipam.file needs network_cidr",
        ),
        (GOOD.replace("10.32.30.0/24", "10.32.300.0/24"), ":7:", "network_cidr"),
        (
            GOOD.replace("file: {path", "fil: {path"),
            ":5:",
            "provider.fil: no installed extension",
        ),
        (GOOD + "dnss:\n  x: {}\n", ":8:", "dnss: unknown section"),
        ("core: [1, 2\n", ":", "not valid YAML"),
        ("- just a list\n", "", "must be a map with a core section"),
        ("provider: {}\n", "", "core: required section is missing"),
        (
            "core:\n  logLevel: LOUD\n  workflowSteps: provider.file,ipam.file\n",
            ":2:",
            "core.logLevel",
        ),
    ],
)
def test_a_bad_config_is_refused_with_where_and_why(tmp_path, text, where, message):
    result, path = check(tmp_path, text)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert str(path) + where in result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.yml")


def test_the_core_refuses_a_bad_config_with_status_2(tmp_path):
    path = tmp_path / "interlook.yml"
    path.write_text(GOOD.replace("500ms", "fast"), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "interlook_core.cli", "core", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        "core.checkFlowInterval" in result.stderr and "Traceback" not in result.stderr
    )
