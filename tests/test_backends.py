"""worker.backends: the registry of runtimes, the mode check, and the backends' own settings."""

from __future__ import annotations

import subprocess
import sys

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
