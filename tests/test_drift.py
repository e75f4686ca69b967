"""benchmarks.drift: the scorer modes measured against CrossEncoder.predict."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from benchmarks.drift import main, order_agreement


def test_order_agreement_counts_pairs_kept_in_order():
    ref = np.array([0.9, 0.5, 0.1])
    assert order_agreement(ref, ref * 2) == 1.0
    assert order_agreement(ref, -ref) == 0.0
    assert order_agreement(ref, np.array([0.9, 0.1, 0.5])) == pytest.approx(2 / 3)
    assert order_agreement(np.array([0.5, 0.5, 0.1]), np.array([0.1, 0.9, 0.0])) == 1.0  # ties in ref: no say


@pytest.mark.model
def test_drift_of_the_exact_mode_on_a_tiny_model(tiny_model, capsys):
    import torch

    threads = torch.get_num_threads()
    try:
        results = main(["--model", str(tiny_model), "--modes", "torch:fp32,onnx:bf16", "--threads", "1",
                        "--rounds", "1", "--drift-requests", "1", "--pairs", "5"])
    finally:
        torch.set_num_threads(threads)
    assert set(results) == {"predict", "torch:fp32"}  # the unknown mode is skipped, with its reason
    assert "skip onnx:bf16: RERANKER_PRECISION=bf16" in capsys.readouterr().err
    assert results["predict"]["max_abs_diff"] == 0.0
    exact = results["torch:fp32"]
    assert exact["requests"] == 2 and exact["max_abs_diff"] < 1e-5 and exact["order_agreement"] > 0.99


def test_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.drift", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "--modes" in proc.stdout
