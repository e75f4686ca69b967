"""Optional scorer backends (ONNX Runtime, OpenVINO) that run a graph exported once from the torch model.

Imported only when RERANKER_BACKEND names them, so the default install needs neither package.
"""
