"""Make optimum 1.x import under torch 2.13 (run by setup.sh inside the infinity venv).

optimum 1.27's exporters import `_attention_scale` from torch.onnx.symbolic_opset14, which
torch 2.13 no longer has, so `import optimum.onnxruntime` (and with it infinity's optimum engine)
fails. torch 2.13 keeps those helpers in torch.onnx._internal.torchscript_exporter.symbolic_opset14;
this points that one import of the venv's copy of optimum there.
"""

import importlib.util
from pathlib import Path

spec = importlib.util.find_spec("optimum")
path = Path(spec.submodule_search_locations[0]) / "exporters" / "onnx" / "model_patcher.py"
text = path.read_text()
OLD = "from torch.onnx.symbolic_opset14 import (  # noqa: E402\n"
# torch 2.13 keeps the private helpers in the TorchScript exporter's own module
NEW = ("from torch.onnx._internal.torchscript_exporter.symbolic_opset14 import (  # noqa: E402"
       "  # patched by benchmarks/peers/patch_infinity.py\n")
if "patched by benchmarks/peers/patch_infinity.py" in text:
    print(f"already patched: {path}")
elif OLD in text:
    path.write_text(text.replace(OLD, NEW))
    print(f"patched {path}")
else:
    print(f"nothing to patch in {path}")
