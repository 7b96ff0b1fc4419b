"""Fixtures shared by the integration tests.

The Docker engine is session-wide: defined here once, so that every module
uses the same engine (two engines on one machine would both want the Swarm
port).
"""

from __future__ import annotations

from tests.integration.docker_engine import (  # noqa: F401 - fixtures
    docker_client,
    docker_host,
    docker_objects,
)
