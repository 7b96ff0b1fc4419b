"""The bus benchmark runs end to end at a tiny size, so it cannot rot unnoticed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_bus_tiny_run_prints_every_figure(tmp_path: Path) -> None:
    figures_path = tmp_path / "figures.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_bus.py"),
            "--sizes",
            "30",
            "--raw-seconds",
            "0.5",
            "--json",
            str(figures_path),
        ],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    for label in (
        "services/s deployed",
        "step round trips/s (both)",
        "step latency p99 (ms)",
        "core peak RSS (MiB)",
        "core restart: all entries (s)",
        "raw pyzmq ROUTER/DEALER round trips/s",
    ):
        assert label in output, output

    figures = json.loads(figures_path.read_text(encoding="utf-8"))
    assert figures["raw_round_trips_per_s"] > 0
    (run,) = figures["sizes"]
    assert run["services"] == 30
    # A warning in the core's log is noted but does not fail this test.
    assert not any(
        p.startswith(("aborted", "step requests recorded", "/services/"))
        for p in run["problems"]
    ), run["problems"]
    for key in (
        "deployed_per_s",
        "undeployed_per_s",
        "step_rate",
        "latency_p50_ms",
        "latency_p99_ms",
        "core_peak_rss_mb",
        "restart_seconds",
        "ratio_to_raw",
    ):
        assert math.isfinite(run[key]) and run[key] > 0, (key, run[key])
    # Two hops (a->b, b->c) per service, deploying and undeploying.
    assert run["latency_samples"] == 4 * 30
