"""RERANKER_BACKEND=onnx: ONNX Runtime on CPU, fp32 or dynamic int8 (avx512_vnni-style: int8 weights,
uint8 activations quantized per batch), with intra-op threads = NUM_THREADS."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .export import Export, Tokenized, load_exported

if TYPE_CHECKING:
    from shared.settings import Settings

FILES = {"fp32": "onnx/model.onnx", "int8": "onnx/model_qint8_avx512_vnni.onnx"}
OPSET = 17


class OnnxModel(Tokenized):
    def __init__(self, model: str, root: Path, precision: str, num_threads: int, max_length: int | None) -> None:
        import onnxruntime as ort

        export = Export(model, root)
        fp32 = export.artifact(FILES["fp32"], lambda tmp: export_onnx(export, tmp))
        if precision == "int8":
            self.path = export.artifact(FILES["int8"], lambda tmp: quantize_onnx(fp32, tmp))
        else:
            self.path = fp32
        export.release_source()
        super().__init__(root, export.meta, max_length)
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.output = self.session.get_outputs()[0].name

    def forward(self, features: dict[str, Any]):
        import torch

        feeds = {name: features[name].numpy() for name in self.inputs}
        return torch.from_numpy(self.session.run([self.output], feeds)[0])


def load(settings: Settings) -> OnnxModel:
    return load_exported(OnnxModel, settings)


def export_onnx(export: Export, tmp: Path) -> None:
    import torch

    names = export.meta["inputs"]
    example = export.example()
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    with torch.inference_mode(False), torch.no_grad():
        # The TorchScript exporter (dynamo=False) handles DeBERTa-v2's relative attention; the dynamo one
        # would also need onnxscript.
        torch.onnx.export(export.wrapper(), tuple(example[n] for n in names), str(tmp), dynamo=False,
                          opset_version=OPSET, input_names=names, output_names=["logits"], dynamic_axes=axes,
                          do_constant_folding=True)


def quantize_onnx(source: Path, tmp: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # int8 weights (signed), uint8 activations quantized on the fly: what optimum's avx512_vnni
    # dynamic config does, for the MatMuls of the Linear layers.
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=False, reduce_range=False,
                     op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
