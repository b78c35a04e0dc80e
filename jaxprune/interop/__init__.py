"""Interchange with other verifiers: ONNX networks (`interop.onnx`) and VNNLIB properties
(`interop.vnnlib`).

Both sit below `jaxprune.verify` (they produce what it verifies: a bound IR net and
input boxes with output specifications). `interop.onnx` needs the optional `onnx`
package; import the submodules directly, so that `vnnlib` works without it.
"""
