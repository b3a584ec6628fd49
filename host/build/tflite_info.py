"""What a .tflite file holds: op histogram (main graph and composite decompositions), tensor sizes."""
from __future__ import annotations

import collections
from functools import lru_cache


@lru_cache(maxsize=1)
def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _model(path: str):
    """The flatbuffer, mapped read-only rather than read: a full-size UNet is 3.4-5.5 GB, and reading it into
    memory cost the build seconds of fresh pages per check (py-spy: 7% of a full-size baseline build)."""
    import mmap

    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid after the file is closed
    return schema.Model.GetRootAsModel(buf, 0)


def _op_type(m, op) -> str:
    """The op's builtin name ("CONV_2D"), or "CUSTOM:<code>" for a custom op."""
    code = m.OperatorCodes(op.OpcodeIndex())
    name = _op_names().get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
    return "CUSTOM:" + (code.CustomCode() or b"").decode() if name == "CUSTOM" else name


def op_histogram(path: str) -> dict[str, dict[str, int]]:
    """{"main": {op: count}, "decompositions": {op: count}}; subgraph 0 is the signature's graph.

    A fused op (the ``odml.group_norm`` composite) counts once in "main"; the ops of its fallback
    decomposition, which LiteRT runs where no fused kernel exists, count in "decompositions".
    """
    m = _model(path)
    main: collections.Counter = collections.Counter()
    decomp: collections.Counter = collections.Counter()
    for si in range(m.SubgraphsLength()):
        sg = m.Subgraphs(si)
        target = main if si == 0 else decomp
        for i in range(sg.OperatorsLength()):
            target[_op_type(m, sg.Operators(i))] += 1
    return {"main": dict(sorted(main.items())), "decompositions": dict(sorted(decomp.items()))}


def composite_names(path: str) -> dict[str, int]:
    """Names of the StableHLO composites in the main graph (e.g. {"odml.group_norm": 61})."""
    m = _model(path)
    sg = m.Subgraphs(0)
    counts: collections.Counter = collections.Counter()
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        if _op_type(m, op) != "STABLEHLO_COMPOSITE":
            continue
        opts = op.BuiltinOptions2()
        from ai_edge_litert import schema_py_generated as schema

        comp = schema.StableHLOCompositeOptions()
        comp.Init(opts.Bytes, opts.Pos)
        counts[(comp.Name() or b"?").decode()] += 1
    return dict(counts)


def _constant(m, sg, t: int) -> bool:
    """Whether tensor ``t`` of subgraph ``sg`` holds data in the file (inline or at an offset) or is an omitted
    optional input (index -1)."""
    if t < 0:
        return True
    b = m.Buffers(sg.Tensors(t).Buffer())
    return b is not None and (b.DataLength() > 0 or b.Size() > 0)


def constant_only_ops(path: str) -> dict[str, int]:
    """Ops of the main graph whose every input is a constant: work the converter left for every invoke that it
    could have done once (``{op: count}``; empty for a fully folded graph). Weight-only DEQUANTIZE ops (fp16
    weights) are listed too: whether they belong is the caller's question."""
    m = _model(path)
    sg = m.Subgraphs(0)
    counts: collections.Counter = collections.Counter()
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        ins = [op.Inputs(j) for j in range(op.InputsLength())]
        if ins and all(_constant(m, sg, t) for t in ins):
            counts[_op_type(m, op)] += 1
    return dict(sorted(counts.items()))


#: Ops whose second input is a weight that XNNPACK needs to be a constant (it packs it once, at load).
_WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")


def runtime_weight_ops(path: str) -> dict[str, int]:
    """Ops of the main graph that take their weight operand from a tensor computed at run time (``{op: count}``).
    XNNPACK leaves such an op to LiteRT's reference kernel: the converter makes one of ``q @ k^T`` in a
    single-head attention, which ran at ~26 GFLOP/s (see ``models.layers.scores``). The weight of a fp16 model
    comes out of a DEQUANTIZE at run time, so this is a check for fp32 graphs."""
    m = _model(path)
    sg = m.Subgraphs(0)
    counts: collections.Counter = collections.Counter()
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        kind = _op_type(m, op)
        if kind in _WEIGHT_OPS and op.InputsLength() > 1 and not _constant(m, sg, op.Inputs(1)):
            counts[kind] += 1
    return dict(sorted(counts.items()))
