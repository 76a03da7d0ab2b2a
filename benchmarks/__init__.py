"""Side-by-side benchmarks: our engines against ONNX Runtime and the BLAS ceiling (``make bench``)."""
