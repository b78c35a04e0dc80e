"""ONNX import/export: onnxruntime agrees with the IR, round trips are exact, bad graphs fail."""
import csv
import os

import jax.numpy as jnp
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from jaxprune import bounds  # noqa: E402
from jaxprune.interop import onnx as jonnx  # noqa: E402
from jaxprune.interop import vnnlib  # noqa: E402
from test_bounds import bound_fn, random_model  # noqa: E402

VNNCOMP = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "vnncomp2021")
# cnn7l at 16x16 still flattens a 2x2x128 map (a real permutation). Its full CROWN takes
# minutes to compile on CPU; CROWN-IBP (the same backward pass from the output) does not.
ZOO = {"mlp_tiny": (6,), "cnn_tiny": (8, 8, 2), "resnet_tiny": (8, 8, 3), "cnn7l": (16, 16, 3)}
BACKWARD = {"cnn7l": "crown_ibp"}
TOL = dict(rtol=1e-5, atol=1e-5)


def run_ort(model, x):
  sess = ort.InferenceSession(model.SerializeToString())
  return sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, np.float32)})[0]


def nchw(x):
  return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def assert_same_net(a, b):
  assert [(n.op, n.name, n.inputs, n.stride, n.padding, n.kernel) for n in a.nodes] == \
         [(n.op, n.name, n.inputs, n.stride, n.padding, n.kernel) for n in b.nodes]
  for n, m in zip(a.nodes, b.nodes):
    for f in ("w", "b"):
      assert (getattr(n, f) is None) == (getattr(m, f) is None), (n.name, f)
      if getattr(n, f) is not None:
        np.testing.assert_array_equal(getattr(n, f), getattr(m, f), err_msg=n.name)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_export_matches_onnxruntime_and_reads_back(name, tmp_path):
  """Masked nets with eval-mode BN: onnxruntime's logits, then the same IR, logits and bounds."""
  shape = ZOO[name]
  model, variables, masks = random_model(name, 0, 0.7, shape)
  net = bounds.from_model(model, variables, masks)
  path = str(tmp_path / f"{name}.onnx")
  saved = jonnx.save(model, path, shape, variables=variables, masks=masks, batch_size=None)
  x = np.random.RandomState(1).rand(2, *shape).astype(np.float32)
  logits = np.asarray(bounds.forward(net, jnp.asarray(x)))
  np.testing.assert_allclose(run_ort(saved, nchw(x)), logits, **TOL)

  back = jonnx.load(path)
  assert back.input_shape == shape and back.onnx_shape == nchw(x).shape[1:]
  assert_same_net(back.net, net)  # node for node, names included
  np.testing.assert_allclose(bounds.forward(back.net, back.to_input(nchw(x))), logits, **TOL)
  xl, xu = jnp.asarray(x - 0.01), jnp.asarray(x + 0.01)
  C = bounds.margin_matrix(jnp.array([1, 7]), 10)
  # BN's gamma (kept for the NRS loss, unused by bounds) does not travel: without it the
  # reference has the imported net's structure, and each bound function compiles once.
  net = net.replace(nodes=tuple(n.replace(gamma=None) for n in net.nodes))
  for method in ("ibp", BACKWARD.get(name, "crown")):
    want = bound_fn(method)(net, xl, xu, C)[:2]
    got = bound_fn(method)(back.net, back.to_input(nchw(xl)), back.to_input(nchw(xu)), C)[:2]
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=method)


def test_export_with_normalisation_and_fixed_batch(tmp_path):
  """mean/std become Sub/Div: the file takes pixels; reading folds them into one affine node."""
  model, variables, masks = random_model("cnn_tiny", 0, 0.7, ZOO["cnn_tiny"])
  net = bounds.from_model(model, variables, masks)
  mean, std = np.array([0.4, 0.6]), np.array([0.2, 0.3])
  path = str(tmp_path / "n.onnx")
  saved = jonnx.save(net, path, (8, 8, 2), mean=mean, std=std)
  assert [d.dim_value for d in saved.graph.input[0].type.tensor_type.shape.dim] == [1, 2, 8, 8]
  x = np.random.RandomState(2).rand(1, 8, 8, 2).astype(np.float32)
  want = np.asarray(bounds.forward(net, jnp.asarray((x - mean) / std, jnp.float32)))
  np.testing.assert_allclose(run_ort(saved, nchw(x)), want, **TOL)
  back = jonnx.load(path)
  first = back.net.nodes[0]
  assert first.op == "affine" and back.net.nodes[1].name == net.nodes[0].name
  np.testing.assert_allclose(first.w, 1 / std, rtol=1e-6)
  np.testing.assert_allclose(first.b, -mean / std, rtol=1e-6)
  np.testing.assert_allclose(bounds.forward(back.net, back.to_input(nchw(x))), want, **TOL)


# --- graphs written with onnx.helper -------------------------------------------------------

def make_model(nodes, consts, in_shape, out_shape=None, opset=13):
  """A model over input "x" with output "y"; checked by onnx when out_shape is given."""
  rng = np.random.RandomState(0)
  inits = [numpy_helper.from_array(
      np.asarray(rng.randn(*v) * 0.5 if isinstance(v, tuple) else v,
                 np.int64 if k.startswith("shape") or k.startswith("pads") else np.float32), k)
      for k, v in consts.items()]
  graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      in_shape)],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                            inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
  model.ir_version = 8
  if out_shape is not None:
    onnx.checker.check_model(model, full_check=True)
  return model


def node(op, inputs, output, **attrs):
  return helper.make_node(op, inputs, [output], name=output + "_node", **attrs)


def cnn_graph():
  """Sub/Div, Conv + BN, Pad + strided Conv, Flatten, Gemm (transB, alpha, beta), MatMul + Add."""
  nodes = [node("Sub", ["x", "mean"], "sub"), node("Div", ["sub", "std"], "div"),
           node("Conv", ["div", "w1", "b1"], "c1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
           node("BatchNormalization", ["c1", "g", "beta", "mu", "var"], "bn", epsilon=1e-3),
           node("Relu", ["bn"], "r1"), node("Pad", ["r1", "pads"], "pad"),
           node("Conv", ["pad", "w2"], "c2", strides=[2, 2]), node("Relu", ["c2"], "r2"),
           node("Flatten", ["r2"], "flat"),
           node("Gemm", ["flat", "w3", "b3"], "fc1", transB=1, alpha=0.5, beta=2.0),
           node("Relu", ["fc1"], "r3"), node("MatMul", ["r3", "w4"], "mm"),
           node("Add", ["mm", "b4"], "y")]
  consts = {"mean": np.array([0.1, 0.5, -0.2]).reshape(1, 3, 1, 1),
            "std": np.array([0.5, 2.0, 1.5]).reshape(1, 3, 1, 1),
            "w1": (4, 3, 3, 3), "b1": (4,), "g": (4,), "beta": (4,), "mu": (4,),
            "var": np.array([0.5, 1.0, 2.0, 0.1]), "pads": [0, 0, 1, 1, 0, 0, 1, 1],
            "w2": (5, 4, 4, 4), "w3": (7, 45), "b3": (7,), "w4": (7, 4), "b4": (4,)}
  return make_model(nodes, consts, ["N", 3, 6, 6], ["N", 4])


def residual_graph():
  """Residual Add, Mul by a constant, AveragePool, Identity, Constant + Reshape, Gemm."""
  shape = helper.make_node("Constant", [], ["shape"], name="shape_node",
                           value=numpy_helper.from_array(np.array([-1, 12], np.int64)))
  nodes = [node("Conv", ["x", "wa"], "ca", pads=[1, 1, 1, 1]), node("Relu", ["ca"], "ra"),
           node("Conv", ["ra", "wb", "bb"], "cb", pads=[1, 1, 1, 1]),
           node("Add", ["cb", "ra"], "res"), node("Relu", ["res"], "rr"),
           node("Mul", ["rr", "scale"], "mul"), node("Identity", ["mul"], "id"),
           node("AveragePool", ["id"], "pool", kernel_shape=[2, 2], strides=[2, 2]), shape,
           node("Reshape", ["pool", "shape"], "flat"), node("Gemm", ["flat", "w", "b"], "y")]
  consts = {"wa": (3, 2, 3, 3), "wb": (3, 3, 3, 3), "bb": (3,),
            "scale": np.array([2.0, -1.0, 0.5]).reshape(3, 1, 1), "w": (12, 5), "b": (5,)}
  return make_model(nodes, consts, ["N", 2, 4, 4], ["N", 5])


def pixel_graph():
  """A per-pixel Sub on an image before Flatten (VNN-COMP's test_sat), c - x, global pooling."""
  nodes = [node("Sub", ["x", "avg"], "sub"), node("GlobalAveragePool", ["x"], "gap"),
           node("Flatten", ["sub"], "flat"), node("Gemm", ["flat", "w1", "b1"], "fc1"),
           node("Relu", ["fc1"], "r"), node("Sub", ["c", "r"], "neg"),
           node("Flatten", ["gap"], "gflat"), node("Gemm", ["gflat", "wg"], "g"),
           node("Gemm", ["neg", "w2"], "fc2"), node("Add", ["fc2", "g"], "y")]
  consts = {"avg": (1, 2, 3, 3), "w1": (18, 6), "b1": (6,), "c": (6,), "wg": (2, 3),
            "w2": (6, 3)}
  return make_model(nodes, consts, ["N", 2, 3, 3], ["N", 3])


def vector_graph():
  """A rank-1 input without batch axis and W @ x (VNN-COMP's test_small)."""
  nodes = [node("MatMul", ["w", "x"], "mm"), node("Add", ["mm", "b"], "h"),
           node("Relu", ["h"], "y")]
  return make_model(nodes, {"w": (4, 3), "b": (4,)}, [3], [4])


@pytest.mark.parametrize("graph", [cnn_graph, residual_graph, pixel_graph, vector_graph])
def test_import_matches_onnxruntime(graph):
  model = graph()
  dims = [d.dim_value or 3 for d in model.graph.input[0].type.tensor_type.shape.dim]
  x = np.random.RandomState(3).randn(*dims).astype(np.float32)
  m = jonnx.load(model)
  want = run_ort(model, x)
  got = bounds.forward(m.net, m.to_input(x[None] if len(dims) == 1 else x))
  np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want, **TOL)


def test_imported_net_bounds_are_sound():
  """CROWN over an ONNX box (to_input of the flat VNNLIB layout) contains onnxruntime's outputs."""
  model = cnn_graph()
  m = jonnx.load(model)
  assert [n.op for n in m.net.nodes] == ["affine", "conv", "affine", "relu", "conv", "relu",
                                         "flatten", "dense", "relu", "dense"]
  rng = np.random.RandomState(4)
  centre = rng.rand(1, 3, 6, 6).astype(np.float32)
  lo, hi = (centre - 0.05).reshape(1, -1), (centre + 0.05).reshape(1, -1)
  lower, upper, _ = bound_fn("crown")(m.net, m.to_input(lo), m.to_input(hi), None)
  x = centre + rng.uniform(-0.05, 0.05, (64, 3, 6, 6)).astype(np.float32)
  y = run_ort(model, x)
  assert np.all(y >= np.asarray(lower) - 1e-5) and np.all(y <= np.asarray(upper) + 1e-5)


def single_node_model(op, in_shape=("N", 2, 5, 5), consts=None, **attrs):
  consts = consts or {}
  return make_model([node(op, ["x"] + list(consts), "y", **attrs)], consts, list(in_shape))


@pytest.mark.parametrize("model, match", [
    (lambda: single_node_model("MaxPool", kernel_shape=[2, 2]),
     "'y_node' \\(MaxPool\\).*unsupported operator"),
    (lambda: single_node_model("Sigmoid"), "'y_node' \\(Sigmoid\\).*unsupported operator"),
    (lambda: single_node_model("Conv", consts={"w": (2, 2, 3, 3)}, dilations=[2, 2]),
     "'y_node' \\(Conv\\).*dilations"),
    (lambda: single_node_model("Conv", consts={"w": (2, 1, 3, 3)}, group=2),
     "'y_node' \\(Conv\\).*group"),
    (lambda: single_node_model("Conv", consts={"w": (2, 2, 3, 3)}, pads=[0, 0, 1, 1]),
     "asymmetric padding"),
    (lambda: single_node_model("Conv", consts={"w": (2, 2, 3, 2)}), "square kernels"),
    (lambda: single_node_model("AveragePool", kernel_shape=[2, 2]), "stride = kernel"),
    (lambda: make_model([node("Pad", ["x", "pads"], "p"), node("Relu", ["p"], "y")],
                        {"pads": [0, 0, 1, 1, 0, 0, 1, 1]}, ["N", 2, 5, 5]),
     "'y_node' \\(Relu\\).*only a Conv"),
    (lambda: make_model([node("Flatten", ["x"], "f"), node("Relu", ["f"], "y")],
                        {}, ["N", 2, 5, 5]), "flattened image"),
    (lambda: single_node_model("Mul", in_shape=["N", 4], consts={"c": (4, 4)}), "broadcast"),
])
def test_unsupported_graphs_fail_loudly(model, match):
  with pytest.raises(jonnx.UnsupportedOnnx, match=match):
    jonnx.load(model())


def test_export_refuses_folded_specs():
  model, variables, masks = random_model("mlp_tiny", 0, 0.7, ZOO["mlp_tiny"])
  net = bounds.fold_spec(bounds.from_model(model, variables, masks),
                         bounds.margin_matrix(jnp.array([0, 1]), 10))
  with pytest.raises(jonnx.UnsupportedOnnx, match="folded spec"):
    jonnx.to_model(net, (6,))


@pytest.mark.integration
@pytest.mark.skipif(not os.path.isdir(VNNCOMP), reason="needs ../shared/data/vnncomp2021")
@pytest.mark.parametrize("benchmark", ["test", "mnistfc"])
def test_vnncomp2021_networks(benchmark):
  """Each instance's net agrees with onnxruntime on points of its VNNLIB box."""
  rows = list(csv.reader(open(os.path.join(VNNCOMP, benchmark, f"{benchmark}_instances.csv"))))
  seen = set()
  rng = np.random.RandomState(5)
  for onnx_file, vnnlib_file, _ in rows:
    if onnx_file in seen:
      continue
    seen.add(onnx_file)
    path = os.path.join(VNNCOMP, benchmark, onnx_file)
    m, model = jonnx.load(path), onnx.load(path)
    for case in vnnlib.read(os.path.join(VNNCOMP, benchmark, vnnlib_file)):
      assert case.lower.size == np.prod(m.input_shape)
      for _ in range(3):
        x = rng.uniform(case.lower, case.upper).astype(np.float32)
        want = run_ort(model, x.reshape(m.onnx_shape if len(m.onnx_shape) == 1
                                        else (1,) + m.onnx_shape))
        got = np.asarray(bounds.forward(m.net, m.to_input(x[None])))
        np.testing.assert_allclose(got.reshape(want.shape), want, **TOL)
  assert len(seen) == {"test": 5, "mnistfc": 3}[benchmark]
