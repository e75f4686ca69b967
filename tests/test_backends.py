"""worker.backends: the registry of runtimes, the mode check, and the backends' own settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.modes import MODES
from worker.backends import RUNTIMES, check_mode, runtime_loader
from worker.runtime import ScorerError


def test_every_backend_but_the_stub_has_a_runtime_loader():
    assert set(RUNTIMES) == set(MODES) - {"stub"}
    for backend in RUNTIMES:
        assert callable(runtime_loader(backend))
    with pytest.raises(KeyError):
        runtime_loader("stub")  # a whole scorer (worker/stub.py), not a runtime


def test_worker_imports_no_optional_backend_no_benchmark_and_no_loop():
    # Importing every worker module must not import onnxruntime or openvino (optional extras), nor the
    # benchmark suite or the dev kit; and the backends must not import the scorer above them.
    code = """
import sys
import worker.backends.torch, worker.backends.onnx, worker.backends.openvino
assert "worker.scorer" not in sys.modules, "a backend imports worker.scorer"
import worker.__main__, worker.health, worker.scorer
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"onnxruntime", "openvino", "nncf", "benchmarks",
                                                                "devkit"})
assert not loaded, loaded
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("backend,precision,named", [
    ("onnx", "bf16", "RERANKER_PRECISION=bf16"),
    ("nonsense", "fp32", "RERANKER_BACKEND=nonsense"),
    ("torch", "fp16", "RERANKER_PRECISION=fp16"),
])
def test_unsupported_combinations_are_refused(backend, precision, named):
    with pytest.raises(ScorerError) as info:
        check_mode(backend, precision)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_stub_is_not_a_mode_to_check():
    with pytest.raises(ScorerError, match="RERANKER_BACKEND=stub is unknown"):
        check_mode("stub", "fp32")


def test_openvino_pins_threads_only_where_they_cover_the_cores():
    from worker.backends.openvino import cpu_config

    # Two 1-thread workers on 2 cores: pinned, both would sit on core 0.
    assert cpu_config("fp32", 1, bf16=True, cores=2)["ENABLE_CPU_PINNING"] is False
    assert cpu_config("fp32", 2, bf16=True, cores=2)["ENABLE_CPU_PINNING"] is True
    assert cpu_config("int8", 2, bf16=False, cores=2)["INFERENCE_PRECISION_HINT"] == "f32"
    assert cpu_config("int8", 2, bf16=True, cores=2)["INFERENCE_PRECISION_HINT"] == "bf16"


def test_export_failures_become_one_line_with_advice(tmp_path):
    from shared.settings import Settings
    from worker.backends.export import load_exported

    def broken(model, root, precision, num_threads, max_length):
        raise OSError("disk full\nmore detail")

    refused = ScorerError("RERANKER_MODEL's activation is not a torch module")

    def refusing(*args):
        raise refused

    settings = Settings(model=str(tmp_path), backend="onnx", export_dir=str(tmp_path / "exports"))
    with pytest.raises(ScorerError) as info:
        load_exported(broken, settings)
    message = str(info.value)
    assert "OSError: disk full" in message and str(tmp_path) in message and "\n" not in message
    assert "saved CrossEncoder" in message  # the advice for a local directory
    with pytest.raises(ScorerError) as info:
        load_exported(refusing, settings)
    assert info.value is refused  # already one line with advice: passed on as it is


# -- exports: DeBERTa's windowed relative attention, caches reused, no torch on a warm start -------------


@pytest.mark.model
def test_windowed_relative_attention_gives_the_same_logits(tiny_model):
    import random

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from devkit.models import sample_text
    from worker.backends.deberta import windowed

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    rng = random.Random(3)
    # short pairs (positions inside the window) and pairs of ~250 and 512 tokens (log-bucketed distances)
    for n, words in [(4, 12), (3, 200), (2, 600)]:
        pairs = [(sample_text(rng, 6), sample_text(rng, words)) for _ in range(n)]
        features = tokenizer(pairs, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            plain = model(**features).logits
            with windowed(model) as patched:
                narrow = model(**features).logits
        assert patched == model.config.num_hidden_layers
        torch.testing.assert_close(narrow, plain, rtol=0, atol=1e-6)
    assert "disentangled_attention_bias" not in vars(model.deberta.encoder.layer[0].attention.self)  # restored


def _warm_start(backend: str, precision: str, model, export_dir) -> dict:
    """Load a scorer in a fresh process; what it imported and where its files are."""
    code = f"""
import json, sys
from shared.settings import Settings
from worker.scorer import CrossEncoderScorer
s = CrossEncoderScorer(Settings(model={str(model)!r}, backend={backend!r}, precision={precision!r}, num_threads=1,
                                export_dir={str(export_dir)!r}))
s.score([("a query", "a text"), ("a query", "another text")])
heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)
print(json.dumps({{"heavy": heavy, "info": s.info}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.model
@pytest.mark.parametrize("backend,module", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_a_warm_export_cache_loads_without_torch_and_is_reused(conditioned_model, tmp_path, backend, module):
    pytest.importorskip(module)
    first = _warm_start(backend, "fp32", conditioned_model, tmp_path)  # exports (with torch)
    made = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")}
    second = _warm_start(backend, "fp32", conditioned_model, tmp_path)
    assert second["heavy"] == []  # tokenizers + numpy + the runtime only
    assert second["info"] == first["info"]
    again = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert again == made  # nothing exported, optimized or compiled again
    if backend == "onnx":
        optimized = Path(second["info"]["optimized"])
        assert optimized.is_file() and (optimized.parent / "model.data").is_file()
    else:
        assert any(Path(second["info"]["compiled_cache"]).iterdir())
