"""The load benchmark runs end to end (tiny settings): real server process, both query kinds, JSON written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_load_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = ["--duration", "1.5", "--warmup", "0", "--clients", "3", "--items", "500", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "load.py"), *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SYNTHETIC" in proc.stdout and "p99 ms" in proc.stdout
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert summary["text"]["requests"] > 0 and summary["image"]["requests"] > 0
    assert summary["all"]["errors"] == 0 and result["server_alive_after"] is True
    assert summary["all"]["p50_ms"] <= summary["all"]["p99_ms"]
