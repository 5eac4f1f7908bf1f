"""fp32 → fp16 ONNX conversion for TensorRT's strongly typed networks.

TensorRT 11 removed the weak-typing builder flags (BuilderFlag.FP16): a network runs in the
precision its ONNX tensors declare. So an fp16 engine is built from an fp16 graph, made here:
every float32 weight and constant becomes float16 (clipped to fp16's range), every float cast
targets float16, and the graph keeps float32 input and output through a Cast at each end, so
callers feed and read float32 whatever the engine's precision.

Tensors that ONNX requires to stay float32 whatever the data type (Resize's `scales`) are
cast back. The result is checked with onnx.checker.
"""
from __future__ import annotations

import numpy as np

FP16_MAX = 65504.0
# (op_type, input index) that must stay float32 even in an fp16 graph
_KEEP_FLOAT32 = {("Resize", 2)}


def _tensor_to_fp16(t):
    from onnx import TensorProto, numpy_helper

    if t.data_type != TensorProto.FLOAT:
        return t
    arr = numpy_helper.to_array(t)
    half = np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(half, t.name)


def convert_to_fp16(model):
    """A float16 copy of `model` (an onnx.ModelProto) with float32 graph input(s) and output(s)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    init_names = {t.name for t in g.initializer}

    # weights and constants
    new_inits = [_tensor_to_fp16(t) for t in g.initializer]
    del g.initializer[:]
    g.initializer.extend(new_inits)
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(_tensor_to_fp16(a.t))
            elif node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
            elif node.op_type == "Constant" and a.name in ("value_float", "value_floats"):
                vals = [a.f] if a.name == "value_float" else list(a.floats)
                arr = np.clip(np.array(vals, np.float32), -FP16_MAX, FP16_MAX).astype(np.float16)
                if a.name == "value_float":
                    arr = arr.reshape(())
                tensor = onnx.numpy_helper.from_array(arr, "")
                a.CopyFrom(helper.make_attribute("value", tensor))

    # float inputs: cast to fp16 right after entry; float outputs: cast back at exit
    head, tail = [], []
    for inp in g.input:
        if inp.name in init_names or inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = inp.name + "__fp16"
        _rename_uses(g, inp.name, inner, outputs=False)
        for out in g.output:  # an input passed straight through
            if out.name == inp.name:
                raise ValueError("graph input is also a graph output; nothing to convert")
        head.append(helper.make_node("Cast", [inp.name], [inner], to=TensorProto.FLOAT16,
                                     name=inp.name + "__to_fp16"))
    for out in g.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = out.name + "__fp16"
        _rename_uses(g, out.name, inner, outputs=True)
        tail.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT, name=out.name + "__to_fp32"))

    # inputs that must stay float32
    fixes = []
    for node in g.node:
        for op, idx in _KEEP_FLOAT32:
            if node.op_type == op and len(node.input) > idx and node.input[idx]:
                src = node.input[idx]
                dst = f"{src}__fp32_for_{node.name or op}"
                fixes.append(helper.make_node("Cast", [src], [dst], to=TensorProto.FLOAT))
                node.input[idx] = dst
    nodes = head + fixes + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    # stale float32 annotations on intermediate tensors would contradict the new types
    del g.value_info[:]
    # keep the graph topologically sorted (the fix-up casts read tensors made by later nodes)
    _toposort(g)
    onnx.checker.check_model(model)
    return model


def _toposort(g) -> None:
    known = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for node in pending:
            if all(n in known for n in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a missing producer: keep the original order
            ordered.extend(rest)
            break
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del g.node[:]
    g.node.extend(copies)


def convert_file(src, dst) -> None:
    import onnx

    onnx.save(convert_to_fp16(onnx.load(str(src))), str(dst))


def _rename_uses(graph, old: str, new: str, *, outputs: bool) -> None:
    """Point every node input (and, with outputs=True, node output) named `old` at `new`."""
    for node in graph.node:
        fields = (node.input, node.output) if outputs else (node.input,)
        for names in fields:
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new
