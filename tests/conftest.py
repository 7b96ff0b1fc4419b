"""Fixtures for every test; the implementations live in tests/support.py."""

from __future__ import annotations

import pytest

from tests.support import cluster_factory  # noqa: F401 - a fixture


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # Keep each phase's report on the item, so fixtures can print logs on failure.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
