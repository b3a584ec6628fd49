"""Per-layer analysis of the real tiny-build .tflite files (the cached tiny baseline build)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from host.traces import graph

UNET_BLOCKS = ["conv_in", "down_blocks.0", "down_blocks.1", "down_blocks.2", "down_blocks.3", "mid_block",
               "up_blocks.0", "up_blocks.1", "up_blocks.2", "up_blocks.3", "conv_out"]


@pytest.fixture(scope="module")
def tiny(tiny_builds):
    manifest, build_dir = tiny_builds.get("baseline")
    return manifest, {c: graph.analyze(build_dir / f"{c}.tflite") for c in ("unet", "text_encoder", "vae_decoder")}


def _dtypes_match(df: pd.DataFrame, schema: dict) -> bool:
    return list(df.columns) == list(schema) and all(
        str(df[c].dtype) == str(pd.Series([], dtype=d).dtype) for c, d in schema.items())


def test_columns_and_op_count(tiny):
    manifest, g = tiny
    for comp, a in g.items():
        assert a.component == comp
        assert _dtypes_match(a.ops, graph.OPS_COLUMNS) and _dtypes_match(a.blocks, graph.BLOCKS_COLUMNS)
        assert len(a.ops) == sum(manifest["components"][comp]["op_histogram"]["main"].values())
        assert a.ops["index"].tolist() == list(range(len(a.ops)))
        assert (a.ops["flops"] >= 0).all() and (a.ops["bytes_moved"] > 0).all()
        assert math.isclose(a.blocks["flops"].sum(), a.total_flops)


def test_unet_blocks_cover_the_flops(tiny):
    _, g = tiny
    a = g["unet"]
    assert a.blocks["block"].tolist() == UNET_BLOCKS
    named = a.ops.loc[a.ops["block_source"] == "name", "flops"].sum()
    assert named / a.total_flops > 0.9
    assert (a.ops["block"] != graph.OTHER_BLOCK).all()
    # Blocks are contiguous runs of ops in graph order.
    assert (a.blocks["first_op"].diff().dropna() > 0).all()
    assert a.blocks["n_ops"].sum() == len(a.ops)
    assert (a.blocks["last_op"] - a.blocks["first_op"] + 1 == a.blocks["n_ops"]).all()


def test_text_encoder_and_decoder_blocks(tiny):
    _, g = tiny
    assert g["text_encoder"].blocks["block"].tolist() == ["embeddings", "layers.0", "layers.1", "final_layer_norm"]
    assert g["vae_decoder"].blocks["block"].tolist() == ["conv_in", "mid_block", "up_blocks.0", "up_blocks.1",
                                                         "up_blocks.2", "up_blocks.3", "conv_out"]
    for comp in ("text_encoder", "vae_decoder"):
        a = g[comp]
        assert a.ops.loc[a.ops["block_source"] == "name", "flops"].sum() / a.total_flops > 0.9


def test_conv_in_flops(tiny):
    manifest, g = tiny
    a = g["unet"]
    sample = manifest["components"]["unet"]["signature"]["inputs"][0]["shape"]  # [2, 4, 8, 8]
    ch = manifest["config"]["unet"]["block_out_channels"][0]
    conv = a.ops[(a.ops["block"] == "conv_in") & (a.ops["op_type"] == "CONV_2D")].iloc[0]
    assert conv["flops"] == 2 * sample[0] * sample[2] * sample[3] * ch * 9 * sample[1]
    assert conv["weight_bytes"] == 4 * (ch * 9 * sample[1] + ch)  # fp32 filter + bias


def test_activation_memory(tiny):
    _, g = tiny
    for a in g.values():
        assert 0 < a.peak_activation_bytes <= a.activation_bytes_total
        assert a.peak_activation_bytes == a.ops["live_bytes"].max()
        assert (a.ops["live_bytes"] >= a.ops["output_bytes"]).all()
        assert (a.blocks["peak_live_bytes"] <= a.peak_activation_bytes).all()
        assert a.blocks["peak_live_bytes"].max() == a.peak_activation_bytes
        assert a.weight_bytes_total > 0


def test_roofline(tiny):
    _, g = tiny
    a = g["unet"]
    r = a.roofline(1e11, 1e10, measured={"mid_block": 0.01, "conv_in": 0.002})
    assert list(r.columns) == list(graph.BLOCKS_COLUMNS) + list(graph.ROOFLINE_COLUMNS)
    assert (r["floor_s"] == r[["compute_s", "memory_s"]].max(axis=1)).all()
    assert math.isclose(r["compute_s"].sum(), a.total_flops / 1e11)
    mid = r[r["block"] == "mid_block"].iloc[0]
    assert math.isclose(mid["ratio"], 0.01 / mid["floor_s"])
    assert r["measured_s"].notna().sum() == 2
    per_op = a.roofline(1e11, 1e10, level="op")
    assert len(per_op) == len(a.ops) and (per_op["bound"].isin(["compute", "memory"])).all()
    tot = graph.roofline_totals(a, 1e11, 1e10)
    assert math.isclose(tot["floor_s"], per_op["floor_s"].sum())
    with pytest.raises(ValueError):
        a.roofline(0, 1e10)


@pytest.mark.parametrize("name, block", [
    ("x._Named/models.unet.UNet_module/models.unet.DownBlock_2/models.blocks.ResnetBlock_0/conv1;3", "down_blocks.2"),
    ("x._Named/models.unet.UNet_module/models.unet.UpBlock_0/models.blocks.Upsample_0;1", "up_blocks.0"),
    ("x._Named/models.unet.UNet_module/models.unet.MidBlock_mid_block/models.blocks.Transformer2D_0;", "mid_block"),
    ("x._Named/models.unet.UNet_module/models.unet.TimestepEmbedding_time_embedding;", "conv_in"),
    ("x._Named/models.unet.UNet_module/models.layers.Conv3x3_conv_in;2", "conv_in"),
    ("x._Named/models.unet.UNet_module/models.layers.GroupNorm_conv_norm_out;2", "conv_out"),
    ("x._Named/models.unet.UNet_module/models.layers.Conv3x3_conv_out;3", "conv_out"),
    ("x._Named/models.vae.VaeDecoder_module/models.vae.Decoder_decoder/models.vae.UpDecoderBlock_3/b;1", "up_blocks.3"),
    ("x._Named/models.vae.VaeDecoder_module/models.vae.Decoder_decoder/models.vae.VaeMidBlock_mid_block/a", "mid_block"),
    ("x._Named/models.vae.VaeDecoder_module/torch.nn.modules.conv.Conv2d_post_quant_conv;3", "conv_in"),
    ("x._Named/models.clip.ClipTextEncoder_module/models.clip.ClipTextTransformer_text_model/models.clip.ClipLayer_11/m",
     "layers.11"),
    ("x._Named/m.ClipTextEncoder_module/m.ClipTextTransformer_text_model/m.ClipEmbeddings_embeddings/e", "embeddings"),
    ("x._Named/m.ClipTextTransformer_text_model/torch.nn.modules.normalization.LayerNorm_final_layer_norm;",
     "final_layer_norm"),
    ("x._Named/models.unet.UNet_module;;x._Named/models.unet.UNet_module/models.unet.DownBlock_0/r;", None),
    ("arith.constant12", None),
    ("unet_noise_pred_output", None),
])
def test_block_of_name(name, block):
    assert graph.block_of_name(name) == block
