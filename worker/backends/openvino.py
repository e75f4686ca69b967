"""RERANKER_BACKEND=openvino: OpenVINO on CPU with INFERENCE_NUM_THREADS = NUM_THREADS.

- fp32: INFERENCE_PRECISION_HINT f32 (OpenVINO would otherwise pick bf16 on a CPU that has it).
- bf16: INFERENCE_PRECISION_HINT bf16 (CPUs with AVX512-BF16 or AMX only).
- int8: int8 weights (NNCF weight compression, no calibration data needed), computed in bf16 where the
  CPU has it, else in f32.

OpenVINO compiles a model for the CPU when it opens it (seconds for mxbai-base); the compiled model is
kept in the export cache (CACHE_DIR, one folder per CPU), so later starts load it in a fraction of that.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cpu import bf16_supported, isa_tag, usable_cpus
from .export import Export, Exported, load_exported

if TYPE_CHECKING:
    from shared.settings import Settings

FILES = {"fp32": "openvino/openvino_model.xml", "int8": "openvino/openvino_model_int8.xml"}


def cpu_config(precision: str, num_threads: int, bf16: bool, cores: int | None = None) -> dict[str, Any]:
    """The CPU plugin's settings for this mode.

    OpenVINO pins its threads to cores by default, counting from the first core in every process: two
    1-thread workers on one host would then share one core and leave the other idle (measured: half
    the throughput). Pinning stays on only where this worker's threads cover every core it may use.
    """
    cores = cores or usable_cpus()
    return {
        "INFERENCE_NUM_THREADS": num_threads,
        "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16", "int8": "bf16" if bf16 else "f32"}[precision],
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": num_threads >= cores,
    }


class OpenVINOModel(Exported):
    def __init__(self, model: str, root: Path, precision: str, num_threads: int, max_length: int | None) -> None:
        import openvino as ov

        export = Export(model, root)
        fp32 = export.artifact(FILES["fp32"], lambda tmp: export_openvino(export, tmp))
        self.path = export.artifact(FILES["int8"], lambda tmp: compress_int8(fp32, tmp)) if precision == "int8" else fp32
        export.release_source()
        super().__init__(export, max_length)
        self.config = cpu_config(precision, num_threads, bf16_supported())
        core = ov.Core()
        self.cache = export.root / "openvino" / f"compiled-{isa_tag()}"
        core.set_property({"CACHE_DIR": str(self.cache)})  # keyed inside by model, settings and version
        self.compiled = core.compile_model(str(self.path), "CPU", self.config)
        self.request = self.compiled.create_infer_request()

    @property
    def info(self) -> dict[str, Any]:
        return {**super().info, "compiled_cache": str(self.cache)}

    def forward(self, features: dict[str, Any]) -> np.ndarray:
        self.request.infer({name: features[name] for name in self.inputs})
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)  # a copy: the buffer is reused


def load(settings: Settings) -> OpenVINOModel:
    return load_exported(OpenVINOModel, settings)


def export_openvino(export: Export, tmp: Path) -> None:
    import openvino as ov
    import torch

    example = export.example()
    with torch.no_grad(), export.wrapper() as module:
        model = ov.convert_model(module, example_input=tuple(example[n] for n in export.meta["inputs"]))
    for port, name in zip(model.inputs, export.meta["inputs"]):
        port.get_tensor().set_names({name})
    ov.save_model(model, str(tmp), compress_to_fp16=False)  # the default would halve the weights to fp16


def compress_int8(source: Path, tmp: Path) -> None:
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)  # not its table of bit widths and progress bars in the worker's log
    model = ov.Core().read_model(str(source))
    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(model, str(tmp), compress_to_fp16=False)
