"""Export a cross-encoder directory to ONNX for infinity's optimum engine: DIR/infinity-onnx/.

infinity-emb's optimum engine loads an ONNX file it finds in the model directory; it does not
export one. optimum 1.x's exporter calls torch.onnx.export in a way that torch 2.13 sends to the
dynamo exporter (which needs onnxscript), so this uses the TorchScript exporter directly:
    python benchmarks/peers/export_onnx.py MODEL_DIR
The result is a model directory of its own (model.onnx, config and tokenizer files), not
DIR/onnx/, where sentence-transformers' own ONNX backend looks for its export.
infinity must be started in that directory with `--model-id .`: given a path, infinity 0.0.78
passes optimum the ONNX file's full path where optimum 1.x expects a name relative to the model.
Inputs: input_ids, attention_mask (the model has no token type embeddings); output: logits.
Runs in the project's .venv (transformers 5.x, whose DeBERTa-v2 code exports cleanly).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path


def export(model_dir: Path) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import shutil

    out = model_dir / "infinity-onnx" / "model.onnx"
    if out.is_file() and out.stat().st_mtime >= (model_dir / "model.safetensors").stat().st_mtime:
        return out.parent
    shutil.rmtree(out.parent, ignore_errors=True)  # with infinity's cache of an older optimised model
    out.parent.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spm.model"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out.parent / name)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok(["a query"] * 2, ["a first sentence", "a second, longer sentence"], padding=True, return_tensors="pt")
    inputs = (enc["input_ids"], enc["attention_mask"])

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    dynamic = {"input_ids": {0: "batch_size", 1: "sequence_length"},
               "attention_mask": {0: "batch_size", 1: "sequence_length"}, "logits": {0: "batch_size"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(model), inputs, str(out), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamic_axes=dynamic, opset_version=14, dynamo=False)
    return out.parent


if __name__ == "__main__":
    print(export(Path(sys.argv[1])))
