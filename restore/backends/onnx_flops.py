"""Count the arithmetic of an ONNX graph at one input size: GFLOP per frame for `restore bench`.

Counted: Conv, ConvTranspose, MatMul and Gemm (a multiply-add is 2 FLOP; biases, activations,
softmax, adds and data movement are left out, as is usual for "GFLOP" figures). Shapes come
from ONNX shape inference with the input fixed to the benchmark size.

Exported graphs compute some shapes at run time (pad-to-a-multiple amounts, window reshapes:
Shape → Mod → Add → Reshape ...). ONNX shape inference does not see through all of those, so
before inferring we fold such small integer sub-graphs into constants: every node whose inputs
are all known and tiny is evaluated once with ONNX's reference evaluator, and the pass repeats
until nothing more folds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COUNTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_MAX_FOLD_ELEMENTS = 4096  # only shape-sized tensors are folded, never activations or weights
_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "If",
            "Loop", "Scan"}


@dataclass
class FlopCount:
    total: float = 0.0  # FLOP
    by_op: dict = field(default_factory=dict)  # op_type -> FLOP
    nodes: dict = field(default_factory=dict)  # op_type -> number of nodes counted
    unresolved: list = field(default_factory=list)  # names of counted-type nodes whose shapes stayed unknown

    @property
    def gflop(self) -> float:
        return self.total / 1e9


def _static_shape(type_proto) -> tuple[int, ...] | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = type_proto.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _fix_input(model, shape: tuple[int, ...]) -> None:
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if not inputs:
        raise ValueError("graph has no input")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise ValueError(f"input has rank {len(dims)}, size given has rank {len(shape)}")
    for d, v in zip(dims, shape):
        d.Clear()
        d.dim_value = int(v)


def _eval_node(node, values: dict, opset: int):
    """Outputs of one node evaluated on known small inputs, or None if it cannot be evaluated here."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    ins = [values[n] if n else None for n in node.input]
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for n, v in zip(node.input, ins) if n]
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        res = ReferenceEvaluator(model).run(None, {n: v for n, v in zip(node.input, ins) if n})
    except Exception:  # noqa: BLE001 - an op the evaluator lacks: leave it to shape inference
        return None
    return [np.asarray(r) for r in res]


def _fold_shapes(model, opset: int) -> bool:
    """One folding pass over the graph (in place). True when something was folded."""
    from onnx import numpy_helper, shape_inference

    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        s = _static_shape(vi.type)
        if s is not None:
            shapes[vi.name] = s
    small = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
             if int(np.prod(t.dims)) <= _MAX_FOLD_ELEMENTS}
    keep, folded = [], False
    for node in model.graph.node:
        outs = None
        if node.op_type == "Shape" and node.input[0] in shapes:
            full = np.array(shapes[node.input[0]], np.int64)
            attrs = {a.name: a.i for a in node.attribute}
            start, end = attrs.get("start", 0), attrs.get("end", len(full))
            outs = [full[start:end]]
        elif node.op_type == "Size" and node.input[0] in shapes:
            outs = [np.array(int(np.prod(shapes[node.input[0]])), np.int64)]
        elif (node.op_type not in _NO_FOLD and node.domain in ("", "ai.onnx")
              # Constant nodes (the TorchScript exporter's way of writing constants) have no inputs
              and (node.op_type == "Constant" or node.input)
              and all((not n) or n in small for n in node.input)):
            outs = _eval_node(node, small, opset)
            if outs is not None and any(o.size > _MAX_FOLD_ELEMENTS for o in outs):
                outs = None
        if outs is None:
            keep.append(node)
            continue
        for name, val in zip([o for o in node.output if o], outs):
            small[name] = val
            model.graph.initializer.append(numpy_helper.from_array(val, name))
        folded = True
    if folded:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return folded


def infer_static_shapes(model, input_shape: tuple[int, ...]):
    """A copy of `model` with its input fixed to `input_shape`, shape sub-graphs folded and every
    tensor shape inferred (as far as it goes). Returns (model, {tensor name: shape})."""
    import onnx
    from onnx import shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]  # the exporter's symbolic shapes would shadow the static ones
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    _fix_input(model, input_shape)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    for _ in range(50):  # each pass folds at least one level of the shape arithmetic
        if not _fold_shapes(model, opset):
            break
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {t.name: tuple(int(d) for d in t.dims) for t in model.graph.initializer}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        s = _static_shape(vi.type)
        if s is not None:
            shapes[vi.name] = s
    return model, shapes


def _attr(node, name, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def node_flops(node, shapes: dict) -> float | None:
    """FLOP of one counted node, or None when a shape it needs is unknown."""
    get = lambda i: shapes.get(node.input[i]) if len(node.input) > i and node.input[i] else None  # noqa: E731
    if node.op_type == "Conv":
        w, y = get(1), shapes.get(node.output[0])
        if w is None or y is None:
            return None
        # every output element: (Cin/group) * prod(kernel) multiply-adds
        return 2.0 * float(np.prod(y)) * float(np.prod(w[1:]))
    if node.op_type == "ConvTranspose":
        x, w = get(0), get(1)
        if x is None or w is None:
            return None
        # every input element is scattered through (Cout/group) * prod(kernel) multiply-adds
        return 2.0 * float(np.prod(x)) * float(np.prod(w[1:]))
    if node.op_type == "MatMul":
        a, b = get(0), get(1)
        if a is None or b is None:
            return None
        a2 = a if len(a) > 1 else (1,) + a
        b2 = b if len(b) > 1 else b + (1,)
        batch = np.broadcast_shapes(a2[:-2], b2[:-2]) if len(a2) > 2 or len(b2) > 2 else ()
        return 2.0 * float(np.prod(batch)) * a2[-2] * a2[-1] * b2[-1]
    if node.op_type == "Gemm":
        a, b = get(0), get(1)
        if a is None or b is None:
            return None
        m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
        n = b[0] if _attr(node, "transB", 0) else b[1]
        return 2.0 * m * k * n
    return 0.0


def count_flops(model_or_path, input_shape: tuple[int, ...]) -> FlopCount:
    """FLOP of one run of the graph on an input of `input_shape` (e.g. (1, 3, 360, 640))."""
    import onnx

    model = onnx.load(str(model_or_path)) if not isinstance(model_or_path, onnx.ModelProto) else model_or_path
    model, shapes = infer_static_shapes(model, tuple(input_shape))
    result = FlopCount()
    for node in model.graph.node:
        if node.op_type not in COUNTED:
            continue
        f = node_flops(node, shapes)
        if f is None:
            result.unresolved.append(node.name or node.output[0])
            continue
        result.total += f
        result.by_op[node.op_type] = result.by_op.get(node.op_type, 0.0) + f
        result.nodes[node.op_type] = result.nodes.get(node.op_type, 0) + 1
    return result
