"""The package's own source is type-checked and lint-clean, as the style asks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["interlook_core", "interlook_ext"]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_packages_type_check():
    result = _run("mypy", *PACKAGES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_line_over_100_characters_and_no_unused_names():
    result = _run(
        "ruff", "check", "--select", "E501,F", "--line-length", "100", *PACKAGES, "tests"
    )
    assert result.returncode == 0, result.stdout + result.stderr
