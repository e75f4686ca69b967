"""`python -m benchmarks soak`: a bounded soak that stops by itself and reports errors and memory."""

from __future__ import annotations

import json

from benchmarks.__main__ import main


def test_soak_runs_for_its_minutes_and_reports_memory_of_each_part(tmp_path, capsys):
    assert main(["soak", "--minutes", "0.1", "--workers", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["load"]["errors"] == 0 and result["load"]["requests"] > 0
    assert 5 <= result["load"]["wall_s"] <= 30  # 6 s of load: it stopped by itself
    assert set(result["rss_mb"]) == {"gateway", "broker", "workers"}
    for part in result["rss_mb"].values():
        assert part["start"] > 0 and part["end"] > 0 and part["peak"] >= part["end"]
    assert len(result["timeline"]) >= 3
    out = capsys.readouterr().out
    assert "| broker |" in out and "growth" in out
