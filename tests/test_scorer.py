"""Scorer modes on tiny local models: exact mode equals CrossEncoder.predict, fast modes drift boundedly,
unsupported modes fail at start with one line naming the variable.

The plain `tiny` model (devkit.models) is badly conditioned: its random encoder gives nearly the same
pooled features for every input, so calibration gives the classifier a gain of ~3000, which turns float32
rounding into score differences of ~2e-5 (predict(batch_size=1) and predict(batch_size=32) already differ
by that much) and bf16/int8 noise into random orders. Exactness and drift are therefore checked on
`conditioned_model`, the same architecture and tokenizer with weights drawn at std 0.2 and the head
recalibrated (gain ~1), where fp32 noise is ~1e-7 as on a trained model.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest

from devkit.models import sample_text
from shared.settings import Settings
from worker import backends
from worker import cpu as cpu_mod
from worker.backends import check_mode
from worker.batching import plan_batches
from worker.runtime import ScorerError
from worker.scorer import CrossEncoderScorer

BF16 = cpu_mod.bf16_supported()


def pairs_for(seed: int, n: int, longest: int = 60):
    """One query, n sentences of mixed lengths, one past the 512-token maximum (truncated, not refused)."""
    rng = random.Random(seed)
    query = sample_text(rng, 8)
    sentences = [sample_text(rng, rng.randint(1, longest)) for _ in range(n - 1)] + [sample_text(rng, 700)]
    rng.shuffle(sentences)
    return [(query, s) for s in sentences]


def agreement(ref: np.ndarray, got: np.ndarray) -> float:
    i, j = np.triu_indices(len(ref), 1)
    return float((np.sign(ref[i] - ref[j]) == np.sign(got[i] - got[j])).mean())


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(autouse=True)
def exports_in_tmp(export_dir, monkeypatch):
    """Every backend exports (torch traces) into the cache: a temporary one here, not ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(export_dir))


_reference_cache: dict = {}


def reference(model, pairs) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    key = str(model)
    if key not in _reference_cache:
        _reference_cache[key] = CrossEncoder(key, device="cpu")
    return _reference_cache[key].predict(pairs, show_progress_bar=False)


def make(model, backend="torch", precision="fp32", batch_size=32, export_dir=None, **kwargs) -> CrossEncoderScorer:
    settings = Settings(model=str(model), backend=backend, precision=precision, num_threads=1,
                        batch_size=batch_size, export_dir=export_dir and str(export_dir), **kwargs)
    return CrossEncoderScorer(settings)


# -- exact mode -------------------------------------------------------------------------------------------

@pytest.mark.model
@pytest.mark.parametrize("batch_size,batch_tokens", [(32, 8192), (5, 8192), (32, 600), (1, 1)])
def test_exact_mode_equals_predict(conditioned_model, one_thread, batch_size, batch_tokens):
    scorer = make(conditioned_model, batch_size=batch_size, batch_tokens=batch_tokens)
    assert scorer.info["backend"] == "torch" and scorer.info["precision"] == "fp32"
    for seed, n in ((1, 1), (2, 5), (3, 40)):
        pairs = pairs_for(seed, n)
        expected = reference(conditioned_model, pairs)
        got = scorer.score(pairs)
        assert got.dtype == np.float32 and got.shape == (n,)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        assert list(np.argsort(-got, kind="stable")) == list(np.argsort(-expected, kind="stable"))
    assert scorer.info["export"].endswith("torch/model_fp32.pt")  # traced once, into the export cache


@pytest.mark.model
def test_exact_mode_one_batch_matches_predict_closely_even_on_plain_tiny(tiny_model, one_thread):
    # Pairs of similar lengths: cutting padding would not pay for another pass, so the request is one
    # batch, the same padded tensor as predict's (up to row order), equal to 1e-6 even on plain `tiny`.
    rng = random.Random(4)
    query = sample_text(rng, 8)
    pairs = [(query, sample_text(rng, rng.randint(20, 24))) for _ in range(12)]
    scorer = make(tiny_model)
    lengths = scorer.runtime.tokenize(pairs)["attention_mask"].sum(1).tolist()
    assert len(plan_batches(lengths, scorer.batch_size, scorer.batch_tokens)) == 1
    np.testing.assert_allclose(scorer.score(pairs), reference(tiny_model, pairs), rtol=0, atol=1e-6)


@pytest.mark.model
def test_empty_request_and_threads(conditioned_model):
    import torch

    before = torch.get_num_threads()
    try:
        scorer = make(conditioned_model)
        assert torch.get_num_threads() == 1 and scorer.info["threads"] == 1
        assert scorer.score([]).shape == (0,)
        assert "TOKENIZERS_PARALLELISM" in os.environ  # set (to false unless the operator chose)
    finally:
        torch.set_num_threads(before)


# -- fast torch modes -------------------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.parametrize("precision", [
    pytest.param("bf16", marks=pytest.mark.skipif(not BF16, reason="CPU without AVX512-BF16/AMX")), "int8"])
def test_fast_torch_modes_drift_boundedly(conditioned_model, one_thread, precision):
    scorer = make(conditioned_model, precision=precision)
    assert scorer.info["precision"] == precision
    for seed in (5, 6):
        pairs = pairs_for(seed, 30)
        expected, got = reference(conditioned_model, pairs), scorer.score(pairs)
        assert got.dtype == np.float32
        assert np.abs(got - expected).max() < 0.15  # loose: tiny random model; see docs/precision.md
        assert agreement(expected, got) > 0.85


@pytest.mark.model
def test_int8_quantizes_the_inner_encoder(conditioned_model, one_thread):
    from transformers import AutoConfig

    graph = str(make(conditioned_model, precision="int8").runtime.module.inlined_graph)
    layers = AutoConfig.from_pretrained(str(conditioned_model)).num_hidden_layers
    # query, key, value, attention output, intermediate and output of every layer; pooler and head stay fp32
    assert graph.count("quantized::linear_dynamic") == 6 * layers
    assert "aten::linear" in graph


# -- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bf16_refused_without_cpu_support(backend, monkeypatch):
    monkeypatch.setattr(cpu_mod, "cpu_flags", lambda path="/proc/cpuinfo": {"avx2", "avx512f"})
    monkeypatch.setattr(backends, "_missing_modules", lambda backend, precision: [])
    with pytest.raises(ScorerError, match="RERANKER_PRECISION=bf16 needs a CPU with AVX512-BF16"):
        make("unused", backend=backend, precision="bf16")  # refused before any model is loaded
    check_mode(backend, "bf16", flags={"avx512_bf16"})
    check_mode(backend, "bf16", flags={"amx_bf16"})


@pytest.mark.parametrize("backend,extra", [("onnx", "onnx"), ("openvino", "openvino")])
def test_backend_without_its_package_is_refused(backend, extra, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    hidden = {"onnxruntime", "onnx", "openvino", "nncf"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    with pytest.raises(ScorerError) as info:
        make("unused", backend=backend, precision="fp32")
    message = str(info.value)
    assert f"RERANKER_BACKEND={backend} needs: pip install '.[{extra}]'" in message and "\n" not in message


def test_worker_exits_3_with_one_line_for_an_unsupported_mode(tmp_path):
    from devkit.procs import clean_env

    proc = subprocess.run([sys.executable, "-m", "worker"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=clean_env(RERANKER_BACKEND="onnx", RERANKER_PRECISION="bf16",
                                                     RERANKER_MODEL=str(tmp_path / "unused")))
    assert proc.returncode == 3
    lines = [line for line in proc.stderr.splitlines() if line.startswith("worker:")]
    assert len(lines) == 1 and "RERANKER_PRECISION=bf16" in lines[0] and "RERANKER_BACKEND=onnx" in lines[0]


# -- ONNX Runtime and OpenVINO (only where their packages are installed) ----------------------------------


@pytest.mark.model
def test_onnx_fp32_equals_predict_and_int8_drifts_boundedly(conditioned_model, export_dir, one_thread):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    exact = make(conditioned_model, backend="onnx", export_dir=export_dir)
    assert exact.info["backend"] == "onnx" and exact.info["export"].endswith("onnx/model.onnx")
    session_threads = exact.runtime.session.get_session_options().intra_op_num_threads
    assert session_threads == 1
    pairs = pairs_for(7, 30)
    expected = reference(conditioned_model, pairs)
    np.testing.assert_allclose(exact.score(pairs), expected, rtol=0, atol=1e-5)
    exported = os.path.getmtime(exact.info["export"])
    fast = make(conditioned_model, backend="onnx", precision="int8", export_dir=export_dir)
    assert os.path.getmtime(exact.info["export"]) == exported  # cached, not exported again
    got = fast.score(pairs)
    assert np.abs(got - expected).max() < 0.15 and agreement(expected, got) > 0.85


@pytest.mark.model
def test_exported_tokenization_equals_crossencoders(conditioned_model, export_dir):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from sentence_transformers import CrossEncoder

    pairs = pairs_for(8, 20, longest=400)
    for max_length in (None, 64):
        ce = CrossEncoder(str(conditioned_model), device="cpu", max_length=max_length)
        settings = Settings(model=str(conditioned_model), backend="onnx", num_threads=1, max_length=max_length,
                            export_dir=str(export_dir))
        exported = CrossEncoderScorer(settings)
        want, got = ce.preprocess(pairs), exported.runtime.tokenize(pairs)
        assert exported.info["max_length"] == ce.max_seq_length
        for name in ("input_ids", "attention_mask"):
            assert got[name].tolist() == want[name].tolist()


@pytest.mark.model
def test_openvino_modes(conditioned_model, export_dir, one_thread):
    pytest.importorskip("openvino")
    exact = make(conditioned_model, backend="openvino", export_dir=export_dir)
    compiled = exact.runtime.compiled
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    if len(os.sched_getaffinity(0)) > 1:
        assert compiled.get_property("ENABLE_CPU_PINNING") is False
    pairs = pairs_for(9, 30)
    expected = reference(conditioned_model, pairs)
    np.testing.assert_allclose(exact.score(pairs), expected, rtol=0, atol=1e-5)
    fast = ["int8"] if importlib_available("nncf") else []
    fast += ["bf16"] if BF16 else []
    for precision in fast:
        got = make(conditioned_model, backend="openvino", precision=precision, export_dir=export_dir).score(pairs)
        assert np.abs(got - expected).max() < 0.3 and agreement(expected, got) > 0.8, precision


def importlib_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.model
def test_tokens_counts_what_the_model_scored_after_truncation(tiny_model):
    from transformers import AutoTokenizer

    scorer = make(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    rng = random.Random(5)
    query = sample_text(rng, 6)
    pairs = [(query, sample_text(rng, n)) for n in (3, 40, 2000)]  # the last one is truncated
    before = scorer.tokens
    scorer.score(pairs)
    lengths = [len(tokenizer(q, s, truncation=True, max_length=scorer.info["max_length"])["input_ids"])
               for q, s in pairs]
    assert lengths[2] == scorer.info["max_length"]
    assert scorer.tokens - before == sum(lengths)
