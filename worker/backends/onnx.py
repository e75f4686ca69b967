"""RERANKER_BACKEND=onnx: ONNX Runtime on CPU, fp32 (exact) or int8, with intra-op threads = NUM_THREADS.

- fp32: the exported graph (worker/backends/export.py).
- int8: the graph dynamically quantized (int8 weights per output channel, uint8 activations quantized
  per batch) in the MatMuls of the Linear layers. Without VNNI, ONNX Runtime multiplies uint8 by int8
  with an instruction (VPMADDUBSW) whose 16-bit sums can saturate; there the weights keep 7 bits
  (reduce_range), as ONNX Runtime advises, at the same speed (docs/precision.md).

ONNX Runtime rewrites a graph when it opens it (constant folding, which also computes DeBERTa's
relative-position projections once, operator fusions, kernel layouts for this CPU), which takes
seconds for mxbai-base. The rewritten graph is saved once per CPU and ONNX Runtime version, with its
weights in a side file, and later starts open that with the rewriting off: ~0.3 s instead of ~2-4 s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cpu import isa_tag, vnni_supported
from .export import Export, Exported, load_exported

if TYPE_CHECKING:
    from shared.settings import Settings

FILES = {"fp32": "onnx/model.onnx", "int8": "onnx/model_qint8_per_channel.onnx",
         "int8-reduced": "onnx/model_qint8_per_channel_7bit.onnx"}
OPSET = 17


class OnnxModel(Exported):
    def __init__(self, model: str, root: Path, precision: str, num_threads: int, max_length: int | None) -> None:
        import onnxruntime as ort

        export = Export(model, root)
        source = export.artifact(FILES["fp32"], lambda tmp: export_onnx(export, tmp))
        if precision == "int8":
            reduced = not vnni_supported()
            source = export.artifact(FILES["int8-reduced" if reduced else "int8"],
                                     lambda tmp: quantize_onnx(export.root / FILES["fp32"], tmp, reduced))
        export.release_source()
        super().__init__(export, max_length)
        self.path = source
        folder = f"onnx/optimized-{ort.__version__}-{isa_tag()}/{source.stem}"
        self.optimized = export.folder(folder, lambda tmp: optimize(source, tmp)) / "model.onnx"
        options = session_options(num_threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # done once, above
        self.session = ort.InferenceSession(str(self.optimized), options, providers=["CPUExecutionProvider"])
        self.output = self.session.get_outputs()[0].name

    @property
    def info(self) -> dict[str, Any]:
        return {**super().info, "optimized": str(self.optimized)}

    def forward(self, features: dict[str, Any]) -> np.ndarray:
        feeds = {name: features[name] for name in self.inputs}
        return np.asarray(self.session.run([self.output], feeds)[0], dtype=np.float32)


def load(settings: Settings) -> OnnxModel:
    return load_exported(OnnxModel, settings)


def session_options(num_threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def optimize(source: Path, directory: Path) -> None:
    """ONNX Runtime's own rewrite of `source` (all levels) into directory/model.onnx + model.data."""
    import onnxruntime as ort

    options = session_options(1)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(directory / "model.onnx")
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.log_severity_level = 3  # its warning that the result is specific to this CPU: hence the folder name
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def export_onnx(export: Export, tmp: Path) -> None:
    import torch

    names = export.meta["inputs"]
    example = export.example()
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    with torch.inference_mode(False), torch.no_grad(), export.wrapper() as module:
        # The TorchScript exporter (dynamo=False) handles DeBERTa-v2's relative attention; the dynamo one
        # would also need onnxscript.
        torch.onnx.export(module, tuple(example[n] for n in names), str(tmp), dynamo=False,
                          opset_version=OPSET, input_names=names, output_names=["logits"], dynamic_axes=axes,
                          do_constant_folding=True)


def quantize_onnx(source: Path, tmp: Path, reduce_range: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # int8 weights (signed, per output channel), uint8 activations quantized on the fly, for the MatMuls
    # of the Linear layers. Measured on AVX2 without VNNI (docs/precision.md): static QDQ/QOperator with
    # calibration and uint8 weights were no faster, and the static forms drifted more.
    logging.disable(logging.WARNING)  # the quantizer logs a line per tensor, and advice, on the root logger
    try:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=reduce_range, op_types_to_quantize=["MatMul"],
                         extra_options={"MatMulConstBOnly": True})
    finally:
        logging.disable(logging.NOTSET)
