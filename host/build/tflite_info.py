"""What a .tflite file holds: op histogram (main graph and composite decompositions), tensor sizes."""
from __future__ import annotations

import collections
from functools import lru_cache


@lru_cache(maxsize=1)
def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _model(path: str):
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        buf = f.read()
    return schema.Model.GetRootAsModel(buf, 0)


def op_histogram(path: str) -> dict[str, dict[str, int]]:
    """{"main": {op: count}, "decompositions": {op: count}}; subgraph 0 is the signature's graph.

    A fused op (the ``odml.group_norm`` composite) counts once in "main"; the ops of its fallback
    decomposition, which LiteRT runs where no fused kernel exists, count in "decompositions".
    """
    m = _model(path)
    names = _op_names()
    main: collections.Counter = collections.Counter()
    decomp: collections.Counter = collections.Counter()
    for si in range(m.SubgraphsLength()):
        sg = m.Subgraphs(si)
        target = main if si == 0 else decomp
        for i in range(sg.OperatorsLength()):
            code = m.OperatorCodes(sg.Operators(i).OpcodeIndex())
            op = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
            if op == "CUSTOM":
                op = "CUSTOM:" + (code.CustomCode() or b"").decode()
            target[op] += 1
    return {"main": dict(sorted(main.items())), "decompositions": dict(sorted(decomp.items()))}


def composite_names(path: str) -> dict[str, int]:
    """Names of the StableHLO composites in the main graph (e.g. {"odml.group_norm": 61})."""
    m = _model(path)
    sg = m.Subgraphs(0)
    names = _op_names()
    counts: collections.Counter = collections.Counter()
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = m.OperatorCodes(op.OpcodeIndex())
        if names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode())) != "STABLEHLO_COMPOSITE":
            continue
        opts = op.BuiltinOptions2()
        from ai_edge_litert import schema_py_generated as schema

        comp = schema.StableHLOCompositeOptions()
        comp.Init(opts.Bytes, opts.Pos)
        counts[(comp.Name() or b"?").decode()] += 1
    return dict(counts)
