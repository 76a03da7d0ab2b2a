"""One module per zoo model; each defines ``build(...) -> onnx.ModelProto`` and ``input_specs(...)``."""
