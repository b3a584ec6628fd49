"""Per-layer analysis of a .tflite from its flatbuffer: FLOPs, bytes moved, activation memory, roofline.

Only tensor metadata (shape, dtype, which buffer) is read; weight data is never loaded. Files are
memory-mapped, so a 3.4 GB model whose weights sit in offset buffers after the flatbuffer costs no
more than its small flatbuffer part.

Blocks come from tensor names: litert-torch names a tensor by the module path that produced it
(``.../models.unet.UNet_module/models.unet.DownBlock_0/models.blocks.ResnetBlock_0/...;2``, fused
locations joined with ``;``). ``block_of_name`` maps such a path onto the diffusers-style block names
the runners use for per-block spans (``down_blocks.0``, ``mid_block``, ``layers.3`` ...). An op whose
output carries no block in its name inherits the block of the op producing its first activation
input, or failing that the block of the next op.
"""
from __future__ import annotations

import math
import mmap
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

OPS_COLUMNS: dict[str, str] = {
    "index": "int64",
    "op_type": "str",
    "composite": "str",            # StableHLO composite name ("odml.group_norm"), "" otherwise
    "output_name": "str",
    "block": "str",
    "block_source": "str",         # how the block was found: "name", "producer", "next" or "none"
    "out_shape": "str",            # e.g. "2x8x8x32"
    "flops": "float64",
    "input_bytes": "int64",        # activation inputs
    "weight_bytes": "int64",       # constant inputs
    "output_bytes": "int64",
    "bytes_moved": "int64",        # input + weight + output
    "live_bytes": "int64",         # activation bytes alive while the op runs
}

BLOCKS_COLUMNS: dict[str, str] = {
    "block": "str",
    "first_op": "int64",
    "last_op": "int64",
    "n_ops": "int64",
    "flops": "float64",
    "flops_share": "float64",
    "weight_bytes": "int64",
    "bytes_moved": "int64",
    "peak_live_bytes": "int64",
}

ROOFLINE_COLUMNS: dict[str, str] = {
    "compute_s": "float64",
    "memory_s": "float64",
    "floor_s": "float64",
    "bound": "str",                # "compute" or "memory"
    "measured_s": "float64",
    "ratio": "float64",            # measured_s / floor_s (NaN where not measured)
}

# Ops counted as 2 * MACs.
MATMUL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL")
# Pure data movement: no arithmetic.
DATA_MOVEMENT_OPS = frozenset({
    "RESHAPE", "TRANSPOSE", "PAD", "PADV2", "MIRROR_PAD", "CONCATENATION", "GATHER", "GATHER_ND", "SLICE",
    "STRIDED_SLICE", "SQUEEZE", "EXPAND_DIMS", "RESIZE_NEAREST_NEIGHBOR", "CAST", "EMBEDDING_LOOKUP", "SPLIT",
    "SPLIT_V", "PACK", "UNPACK", "TILE", "BROADCAST_TO", "SHAPE", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH",
    "REVERSE_V2", "DYNAMIC_UPDATE_SLICE", "ZEROS_LIKE", "ONES_LIKE", "FILL",
})
# Reductions: one operation per input element.
REDUCE_OPS = frozenset({"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "ARG_MAX", "ARG_MIN"})
# Per-element cost of a few multi-pass ops (others count 1 per output element).
ELEMENT_COST = {"SOFTMAX": 5.0, "LOG_SOFTMAX": 5.0, "GELU": 8.0, "L2_NORMALIZATION": 3.0, "RESIZE_BILINEAR": 4.0}
GROUP_NORM_COST = 8.0

_DTYPE_BYTES = {
    "FLOAT32": 4, "FLOAT16": 2, "BFLOAT16": 2, "FLOAT64": 8, "INT32": 4, "UINT32": 4, "INT64": 8, "UINT64": 8,
    "INT16": 2, "UINT16": 2, "INT8": 1, "UINT8": 1, "BOOL": 1, "COMPLEX64": 8, "COMPLEX128": 16, "INT4": 0.5,
    "INT2": 0.25, "STRING": 0, "RESOURCE": 0, "VARIANT": 0,
}

# (pattern, block) tried in order on each ';'-separated location of a tensor name; first hit wins.
BLOCK_RULES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), b) for p, b in (
    (r"UpDecoderBlock_(\d+)", "up_blocks.{0}"),          # VAE decoder
    (r"(?<![A-Za-z])DownBlock_(\d+)", "down_blocks.{0}"),
    (r"(?<![A-Za-z])UpBlock_(\d+)", "up_blocks.{0}"),
    (r"MidBlock_mid_block", "mid_block"),
    (r"ClipLayer_(\d+)", "layers.{0}"),                  # text encoder
    (r"ClipEmbeddings|token_embedding|position_embedding", "embeddings"),
    (r"final_layer_norm", "final_layer_norm"),
    (r"conv_norm_out|conv_out(?![A-Za-z0-9_])", "conv_out"),
    (r"TimestepEmbedding|time_embedding|conv_in(?![A-Za-z0-9_])|post_quant_conv", "conv_in"),
))
OTHER_BLOCK = "other"

_COMPONENT_HINTS = (("UNet_module", "unet"), ("VaeDecoder_module", "vae_decoder"),
                    ("ClipTextEncoder_module", "text_encoder"))


def block_of_name(name: str) -> str | None:
    """The block a tensor name belongs to, or None when its name says nothing about it.

    Only the first module path of a fused name counts (``A;;B`` is an op of A that fused in a
    piece of B): a top-level path such as ``UNet_module;;.../DownBlock_0/...`` gives None, and the op
    then inherits its block from its producer.
    """
    for part in name.split(";"):
        if "/" not in part and "_" not in part:
            continue
        for pattern, block in BLOCK_RULES:
            m = pattern.search(part)
            if m:
                groups = [g for g in m.groups() if g is not None]
                return block.format(*groups) if groups else block
        return None
    return None


def block_sort_key(block: str) -> tuple:
    """Canonical order: inputs, down, mid, up, outputs (UNet / VAE); embeddings, layers, final (CLIP)."""
    m = re.fullmatch(r"(\w+)\.(\d+)", block)
    rank = {"conv_in": 0, "embeddings": 0, "down_blocks": 1, "layers": 1, "mid_block": 2, "up_blocks": 3,
            "conv_out": 4, "final_layer_norm": 4, OTHER_BLOCK: 5}
    if m:
        return (rank.get(m.group(1), 5), int(m.group(2)), block)
    return (rank.get(block, 5), 0, block)


@lru_cache(maxsize=1)
def _schema_maps() -> tuple[dict[int, str], dict[int, str]]:
    from ai_edge_litert import schema_py_generated as schema

    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return ops, types


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    const: bool

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return int(math.ceil(self.numel * _DTYPE_BYTES.get(self.dtype, 4)))


@dataclass
class _Op:
    index: int
    op_type: str
    composite: str
    decomposition: int          # subgraph index of a composite's decomposition, -1 otherwise
    inputs: list[int]
    outputs: list[int]
    adj_x: bool = False


class _Graph:
    """Subgraphs of a model, read once into plain Python objects (no buffer data)."""

    def __init__(self, path: str):
        from ai_edge_litert import schema_py_generated as schema

        op_names, type_names = _schema_maps()
        with open(path, "rb") as f:
            try:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # empty file
                raise ValueError(f"{path}: not a .tflite flatbuffer (empty file)") from None
        try:
            model = schema.Model.GetRootAsModel(mm, 0)
            n_buffers = model.BuffersLength()
            const_buffers: dict[int, bool] = {}

            def is_const(buf_index: int, external: int) -> bool:
                if external > 0:
                    return True
                if buf_index <= 0 or buf_index >= n_buffers:
                    return False
                if buf_index not in const_buffers:
                    b = model.Buffers(buf_index)
                    const_buffers[buf_index] = bool(b.DataLength() > 0 or b.Offset() > 1 or b.Size() > 0)
                return const_buffers[buf_index]

            self.subgraphs: list[tuple[list[_Tensor], list[_Op], list[int], list[int]]] = []
            for si in range(model.SubgraphsLength()):
                sg = model.Subgraphs(si)
                tensors = []
                for ti in range(sg.TensorsLength()):
                    t = sg.Tensors(ti)
                    shape = tuple(int(x) for x in t.ShapeAsNumpy()) if t.ShapeLength() else ()
                    tensors.append(_Tensor((t.Name() or b"").decode("utf-8", "replace"), shape,
                                           type_names.get(t.Type(), "FLOAT32"), is_const(t.Buffer(), t.ExternalBuffer())))
                ops = []
                for oi in range(sg.OperatorsLength()):
                    op = sg.Operators(oi)
                    code = model.OperatorCodes(op.OpcodeIndex())
                    op_type = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
                    if op_type == "CUSTOM":
                        op_type = "CUSTOM:" + (code.CustomCode() or b"").decode()
                    composite, decomp, adj_x = "", -1, False
                    if op_type == "STABLEHLO_COMPOSITE":
                        opts = op.BuiltinOptions2()
                        if opts is not None:
                            comp = schema.StableHLOCompositeOptions()
                            comp.Init(opts.Bytes, opts.Pos)
                            composite = (comp.Name() or b"").decode()
                            decomp = comp.DecompositionSubgraphIndex()
                    elif op_type == "BATCH_MATMUL" and op.BuiltinOptions() is not None:
                        bo = schema.BatchMatMulOptions()
                        tab = op.BuiltinOptions()
                        bo.Init(tab.Bytes, tab.Pos)
                        adj_x = bool(bo.AdjX())
                    ins = [int(x) for x in op.InputsAsNumpy()] if op.InputsLength() else []
                    outs = [int(x) for x in op.OutputsAsNumpy()] if op.OutputsLength() else []
                    ops.append(_Op(oi, op_type, composite, decomp, ins, outs, adj_x))
                g_in = [int(x) for x in sg.InputsAsNumpy()] if sg.InputsLength() else []
                g_out = [int(x) for x in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
                self.subgraphs.append((tensors, ops, g_in, g_out))
            del model
        finally:
            try:
                mm.close()
            except BufferError:  # a numpy view still alive; the map closes when it is collected
                pass

    def op_flops(self, si: int, op: _Op, depth: int = 0) -> float:
        tensors = self.subgraphs[si][0]
        t_in = [tensors[i] if i >= 0 else None for i in op.inputs]
        out = tensors[op.outputs[0]] if op.outputs else None
        out_n = float(sum(tensors[i].numel for i in op.outputs)) if op.outputs else 0.0
        t = op.op_type
        try:
            if t == "CONV_2D" and out is not None and len(t_in) > 1 and t_in[1] is not None:
                f = t_in[1].shape  # [cout, kh, kw, cin/groups]
                return 2.0 * out.numel * f[1] * f[2] * f[3]
            if t == "DEPTHWISE_CONV_2D" and out is not None and len(t_in) > 1 and t_in[1] is not None:
                f = t_in[1].shape  # [1, kh, kw, cout]
                return 2.0 * out.numel * f[1] * f[2]
            if t == "TRANSPOSE_CONV" and len(t_in) > 2 and t_in[1] is not None and t_in[2] is not None:
                f = t_in[1].shape  # [cout, kh, kw, cin]; each input element scatters kh*kw*cout products
                return 2.0 * t_in[2].numel * f[0] * f[1] * f[2]
            if t == "FULLY_CONNECTED" and out is not None and len(t_in) > 1 and t_in[1] is not None:
                return 2.0 * out.numel * t_in[1].shape[-1]
            if t == "BATCH_MATMUL" and out is not None and t_in and t_in[0] is not None:
                x = t_in[0].shape
                k = x[-2] if op.adj_x else x[-1]
                return 2.0 * out.numel * k
        except (IndexError, TypeError):
            pass
        if t == "STABLEHLO_COMPOSITE":
            if "group_norm" in op.composite:
                return GROUP_NORM_COST * out_n
            if 0 < op.decomposition < len(self.subgraphs) and depth < 4:
                _, dops, _, _ = self.subgraphs[op.decomposition]
                return float(sum(self.op_flops(op.decomposition, d, depth + 1) for d in dops))
            return out_n
        if t in DATA_MOVEMENT_OPS:
            return 0.0
        if t in REDUCE_OPS:
            return float(t_in[0].numel) if t_in and t_in[0] is not None else out_n
        return ELEMENT_COST.get(t, 1.0) * out_n


@dataclass
class GraphAnalysis:
    path: str
    component: str
    ops: pd.DataFrame           # OPS_COLUMNS, one row per op of subgraph 0
    blocks: pd.DataFrame        # BLOCKS_COLUMNS, one row per block in canonical order
    peak_activation_bytes: int  # max over ops of live activation bytes
    activation_bytes_total: int  # sum of the sizes of all activation tensors
    weight_bytes_total: int     # sum of the sizes of all constant tensors of subgraph 0
    total_flops: float

    def roofline(self, peak_flops: float, mem_bandwidth: float,
                 measured: Mapping[str, float] | pd.Series | pd.DataFrame | None = None,
                 level: str = "block") -> pd.DataFrame:
        """``blocks`` (or ``ops`` with level="op") plus ROOFLINE_COLUMNS; see ``roofline``."""
        frame = self.blocks if level == "block" else self.ops
        key = "block" if level == "block" else "index"
        return roofline(frame, peak_flops, mem_bandwidth, measured=measured, key=key)

    def summary(self) -> dict:
        return {"path": self.path, "component": self.component, "n_ops": int(len(self.ops)),
                "total_flops": self.total_flops, "weight_bytes": self.weight_bytes_total,
                "peak_activation_bytes": self.peak_activation_bytes,
                "activation_bytes_total": self.activation_bytes_total}


def empty_frame(columns: Mapping[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in columns.items()})


def _typed(rows: list[dict] | dict[str, list], columns: Mapping[str, str]) -> pd.DataFrame:
    if not len(rows):
        return empty_frame(columns)
    df = pd.DataFrame(rows)
    return pd.DataFrame({c: df[c].astype(d) if c in df else pd.Series([None] * len(df), dtype=d)
                         for c, d in columns.items()})


def infer_component(path: str | Path, names: list[str] | None = None) -> str:
    stem = Path(path).stem
    for c in ("text_encoder", "unet", "vae_decoder"):
        if stem == c or stem.startswith(c):
            return c
    for name in names or []:
        for hint, c in _COMPONENT_HINTS:
            if hint in name:
                return c
    return stem


def analyze(path: str | Path, component: str | None = None) -> GraphAnalysis:
    """Per-op and per-block FLOPs, bytes moved and activation memory of subgraph 0 of ``path``."""
    path = str(path)
    g = _Graph(path)
    if not g.subgraphs:
        raise ValueError(f"{path}: model has no subgraphs")
    tensors, ops, g_in, g_out = g.subgraphs[0]
    n_ops = len(ops)
    names = [tensors[op.outputs[0]].name if op.outputs else "" for op in ops]
    component = component or infer_component(path, names[:50])

    # Blocks: by name, then by producer, then by the next op.
    producer: dict[int, int] = {}
    for op in ops:
        for t in op.outputs:
            producer.setdefault(t, op.index)
    blocks: list[str | None] = []
    sources: list[str] = []
    for op in ops:
        b, src = None, "none"
        for t in op.outputs:
            b = block_of_name(tensors[t].name)
            if b:
                src = "name"
                break
        if b is None:
            for t in op.inputs:
                if t >= 0 and t in producer and not tensors[t].const and blocks[producer[t]]:
                    b, src = blocks[producer[t]], "producer"
                    break
        blocks.append(b)
        sources.append(src)
    nxt = None
    for i in range(n_ops - 1, -1, -1):
        if blocks[i] is None and nxt is not None:
            blocks[i], sources[i] = nxt, "next"
        nxt = blocks[i] or nxt
    blocks = [b or OTHER_BLOCK for b in blocks]

    # Activation lifetimes: producer (graph inputs: op 0) .. last consumer (graph outputs: last op).
    start: dict[int, int] = {t: 0 for t in g_in if t >= 0 and not tensors[t].const}
    end: dict[int, int] = {}
    for op in ops:
        for t in op.outputs:
            if not tensors[t].const:
                start.setdefault(t, op.index)
                end[t] = max(end.get(t, op.index), op.index)
        for t in op.inputs:
            if t >= 0 and not tensors[t].const:
                end[t] = max(end.get(t, op.index), op.index)
    for t in g_out:
        if t >= 0 and t in start:
            end[t] = max(n_ops - 1, 0)
    delta = np.zeros(n_ops + 1, dtype=np.int64)
    act_total = 0
    for t, s in start.items():
        e = end.get(t, s)
        nb = tensors[t].nbytes
        act_total += nb
        if n_ops:
            delta[min(s, n_ops - 1)] += nb
            delta[min(e, n_ops - 1) + 1] -= nb
    live = np.cumsum(delta)[:n_ops] if n_ops else np.zeros(0, dtype=np.int64)

    rows = []
    for op, blk, src, lb in zip(ops, blocks, sources, live):
        in_b = w_b = 0
        for t in op.inputs:
            if t < 0:
                continue
            if tensors[t].const:
                w_b += tensors[t].nbytes
            else:
                in_b += tensors[t].nbytes
        out_b = sum(tensors[t].nbytes for t in op.outputs)
        out_t = tensors[op.outputs[0]] if op.outputs else None
        rows.append({
            "index": op.index, "op_type": op.op_type, "composite": op.composite,
            "output_name": out_t.name if out_t else "", "block": blk, "block_source": src,
            "out_shape": "x".join(str(d) for d in out_t.shape) if out_t else "",
            "flops": g.op_flops(0, op), "input_bytes": in_b, "weight_bytes": w_b, "output_bytes": out_b,
            "bytes_moved": in_b + w_b + out_b, "live_bytes": int(lb),
        })
    ops_df = _typed(rows, OPS_COLUMNS)
    blocks_df = _block_table(ops_df)
    weight_total = sum(t.nbytes for t in tensors if t.const)
    return GraphAnalysis(path=path, component=component, ops=ops_df, blocks=blocks_df,
                         peak_activation_bytes=int(live.max()) if n_ops else 0,
                         activation_bytes_total=int(act_total), weight_bytes_total=int(weight_total),
                         total_flops=float(ops_df["flops"].sum()))


def _block_table(ops_df: pd.DataFrame) -> pd.DataFrame:
    if ops_df.empty:
        return empty_frame(BLOCKS_COLUMNS)
    total = float(ops_df["flops"].sum()) or 1.0
    rows = []
    for blk, grp in ops_df.groupby("block", sort=False):
        rows.append({"block": blk, "first_op": int(grp["index"].min()), "last_op": int(grp["index"].max()),
                     "n_ops": len(grp), "flops": float(grp["flops"].sum()),
                     "flops_share": float(grp["flops"].sum()) / total,
                     "weight_bytes": int(grp["weight_bytes"].sum()), "bytes_moved": int(grp["bytes_moved"].sum()),
                     "peak_live_bytes": int(grp["live_bytes"].max())})
    rows.sort(key=lambda r: block_sort_key(r["block"]))
    return _typed(rows, BLOCKS_COLUMNS)


def roofline(frame: pd.DataFrame, peak_flops: float, mem_bandwidth: float,
             measured: Mapping | pd.Series | pd.DataFrame | None = None, key: str = "block") -> pd.DataFrame:
    """Adds compute_s = flops/peak, memory_s = bytes_moved/bw, floor_s = max of both, bound, and,
    where ``measured`` gives a time for a row's ``key`` (a mapping, a Series indexed by key, or a frame
    with ``key`` and ``measured_s`` columns), measured_s and ratio = measured_s / floor_s."""
    if not (peak_flops and peak_flops > 0 and mem_bandwidth and mem_bandwidth > 0):
        raise ValueError("roofline needs positive peak_flops and mem_bandwidth")
    out = frame.copy()
    out["compute_s"] = (out["flops"].astype("float64") / float(peak_flops)).astype("float64")
    out["memory_s"] = (out["bytes_moved"].astype("float64") / float(mem_bandwidth)).astype("float64")
    out["floor_s"] = np.maximum(out["compute_s"], out["memory_s"]).astype("float64")
    out["bound"] = pd.Series(np.where(out["compute_s"] >= out["memory_s"], "compute", "memory"),
                             index=out.index, dtype="str")
    m = _measured_map(measured, key)
    out["measured_s"] = out[key].map(lambda k: m.get(k, np.nan)).astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio"] = (out["measured_s"] / out["floor_s"].where(out["floor_s"] > 0)).astype("float64")
    return out


def _measured_map(measured, key: str) -> dict:
    if measured is None:
        return {}
    if isinstance(measured, pd.DataFrame):
        if measured.empty:
            return {}
        col = "measured_s" if "measured_s" in measured else "median_s"
        return dict(zip(measured[key], measured[col].astype(float)))
    if isinstance(measured, pd.Series):
        return {k: float(v) for k, v in measured.items()}
    return {k: float(v) for k, v in dict(measured).items()}


def roofline_totals(analysis: GraphAnalysis, peak_flops: float, mem_bandwidth: float) -> dict:
    """Whole-graph floor: sum of the per-op floors (ops run one after another)."""
    r = roofline(analysis.ops, peak_flops, mem_bandwidth, key="index")
    return {"floor_s": float(r["floor_s"].sum()), "compute_s": float(r["compute_s"].sum()),
            "memory_s": float(r["memory_s"].sum())}
