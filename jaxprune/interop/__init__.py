"""Interchange with other verifiers: ONNX networks (`interop.onnx`) and VNNLIB properties
(`interop.vnnlib`).

Both sit below `jaxprune.verify` (they produce what it verifies: a bound IR net and
input boxes with output specifications). Import the submodules directly: `vnnlib`
needs only numpy, `onnx` the `onnx` package (a dependency; onnxruntime, which the
VNN-COMP runner re-checks counterexamples with, is the optional `interop` extra).
"""
