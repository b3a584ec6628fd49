"""Every switch of the ladder on the tiny config: converted, gated, and visible in the graph."""
from __future__ import annotations

import json

import pytest

from host.build import gates
from host.build.tflite_info import constant_only_ops, runtime_weight_ops
from models.config import LADDER

NAMED = [n for n in LADDER if n != "optimized"]  # the ladder rungs and the cpu set ("optimized" is an alias)


def _gates(meta: dict) -> dict[str, dict]:
    return {g["check"]: g for g in meta["gates"]}


@pytest.mark.parametrize("rung", NAMED)
def test_every_rung_builds_and_passes_its_gates(tiny_builds, rung):
    manifest, path = tiny_builds.get(rung)
    assert manifest["variant"]["name"] == rung
    for name, comp in manifest["components"].items():
        assert (path / comp["file"]).stat().st_size == comp["size_bytes"]
        assert constant_only_ops(str(path / comp["file"])) == {}, name  # conversion folded every constant subgraph
        assert runtime_weight_ops(str(path / comp["file"])) == {}, name  # every weighted op is XNNPACK's to run
        g = _gates(comp)
        assert g["tflite_vs_torch"]["passed"] and g["tflite_vs_torch"]["value"] <= gates.TFLITE_VS_TORCH_REL_ERR["fp32"]
        assert g["baseline_vs_diffusers"]["value"] <= gates.DIFFUSERS_REL_ERR
        if rung == "baseline":
            assert "variant_vs_baseline" not in g
        elif name != "text_encoder" or LADDER[rung].softmax:
            assert g["variant_vs_baseline"]["passed"]
    assert manifest["weights"]["kind"] == "random" and "random weights" in manifest["weights"]["warning"]


def _main_ops(manifest, comp):
    return manifest["components"][comp]["op_histogram"]["main"]


def test_gn_gelu_switch_fuses_group_norm_and_gelu(tiny_builds):
    base, _ = tiny_builds.get("baseline")
    fused, _ = tiny_builds.get("+gn_gelu")
    for comp in ("unet", "vae_decoder"):
        assert "STABLEHLO_COMPOSITE" not in _main_ops(base, comp)
        assert fused["components"][comp]["composites"].get("odml.group_norm", 0) > 0
        assert _main_ops(base, comp)["MEAN"] > _main_ops(fused, comp).get("MEAN", 0)
    assert "GELU" not in _main_ops(base, "unet")
    assert _main_ops(fused, "unet")["GELU"] > 0


def test_softmax_switch_removes_the_softmax_op(tiny_builds):
    before, _ = tiny_builds.get("+gn_gelu")
    after, _ = tiny_builds.get("+softmax")
    for comp in ("text_encoder", "unet", "vae_decoder"):
        assert _main_ops(before, comp).get("SOFTMAX", 0) > 0
        assert _main_ops(after, comp).get("SOFTMAX", 0) == 0
        assert _main_ops(after, comp)["REDUCE_MAX"] > 0


def test_flash_tiles_the_highest_resolution_attention(tiny_builds):
    # The tiny latent is 8x8 = 64 tokens: tiles of 16 queries x 32 keys make a 4 x 2 grid per attention.
    untiled, _ = tiny_builds.get("+softmax", components=("unet",))
    tiled, _ = tiny_builds.get("+flash", components=("unet",), flash_block_q=16, flash_block_kv=32)
    g = _gates(tiled["components"]["unet"])
    assert g["variant_vs_baseline"]["passed"]
    assert _main_ops(tiled, "unet")["BATCH_MATMUL"] > _main_ops(untiled, "unet")["BATCH_MATMUL"]
    assert _main_ops(tiled, "unet")["EXP"] > _main_ops(untiled, "unet")["EXP"]


@pytest.mark.parametrize("m", [2, 4, 6])
def test_winograd_tiles_pass_their_gates(tiny_builds, m):
    direct, _ = tiny_builds.get("+flash")
    manifest, _ = tiny_builds.get("+flash", components=("unet", "vae_decoder"), winograd_unet=m, winograd_decoder=m)
    for comp in ("unet", "vae_decoder"):
        ops = _main_ops(manifest, comp)
        assert ops["BATCH_MATMUL"] > _main_ops(direct, comp)["BATCH_MATMUL"]  # one GEMM per Winograd conv
        assert "TRANSPOSE_CONV" not in ops  # the output transform is a matrix product, not a deconvolution
        g = _gates(manifest["components"][comp])["variant_vs_baseline"]
        metric, bound = gates.variant_bounds(comp, "fp32")
        assert g["metric"] == metric and g["bound"] == bound and g["passed"]


def test_winograd_is_selectable_per_component(tiny_builds):
    direct, _ = tiny_builds.get("+flash")
    manifest, _ = tiny_builds.get("+flash", components=("unet", "vae_decoder"), winograd_unet=0, winograd_decoder=4)
    assert _main_ops(manifest, "unet")["BATCH_MATMUL"] == _main_ops(direct, "unet")["BATCH_MATMUL"]
    assert _main_ops(manifest, "vae_decoder")["BATCH_MATMUL"] > _main_ops(direct, "vae_decoder")["BATCH_MATMUL"]


def test_wide_levels_with_their_own_tile_pass_the_gates(tiny_builds):
    # the cpu set: F(2,3) at the two deepest levels; with winograd_wide=0 those convs are direct
    direct, _ = tiny_builds.get("cpu", components=("unet",), winograd_wide=0)
    wide, _ = tiny_builds.get("cpu", components=("unet",))
    assert _main_ops(wide, "unet")["BATCH_MATMUL"] > _main_ops(direct, "unet")["BATCH_MATMUL"]
    assert _gates(wide["components"]["unet"])["variant_vs_baseline"]["passed"]


@pytest.mark.parametrize("variant, quant", [("optimized", "fp16"), ("+flash", "int8")])
def test_quantized_variants(tiny_builds, variant, quant):
    fp32, _ = tiny_builds.get(variant)
    q, path = tiny_builds.get(variant, quantization=quant)
    assert q["variant"]["quantization"] == quant
    for comp in ("text_encoder", "unet", "vae_decoder"):
        c = q["components"][comp]
        # only the weights' own dequantization may run on constants (fp16 weights stay fp16 in the file)
        assert set(constant_only_ops(str(path / c["file"]))) <= {"DEQUANTIZE"}, comp
        assert c["size_bytes"] < fp32["components"][comp]["size_bytes"]
        g = _gates(c)
        assert g["tflite_vs_torch"]["bound"] == gates.TFLITE_VS_TORCH_REL_ERR[quant] and g["tflite_vs_torch"]["passed"]
        assert g["variant_vs_baseline"]["passed"]


def test_manifest_records_what_a_deployer_needs(tiny_builds):
    manifest, path = tiny_builds.get("optimized")
    on_disk = json.loads((path / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["variant"]["switches"]["winograd_unet"] == 4
    assert set(manifest["tool_versions"]) >= {"torch", "litert-torch", "ai-edge-litert"}
    unet = manifest["components"]["unet"]
    assert [i["name"] for i in unet["signature"]["inputs"]] == ["sample", "t_emb", "context"]
    assert unet["signature"]["inputs"][0]["shape"] == [2, 4, 8, 8]
    assert unet["signature"]["outputs"] == [{"name": "noise_pred", "shape": [2, 4, 8, 8], "dtype": "float32"}]
    assert len(unet["sha256"]) == 64 and unet["op_histogram"]["main"]
    assert manifest["tokenizer"]["kind"] == "fallback"


def test_components_are_shared_between_variants_that_do_not_change_them(tiny_builds):
    gn, _ = tiny_builds.get("+gn_gelu")
    base, _ = tiny_builds.get("baseline")
    # The text encoder only depends on the softmax switch.
    assert gn["components"]["text_encoder"]["sha256"] == base["components"]["text_encoder"]["sha256"]
    assert gn["components"]["unet"]["sha256"] != base["components"]["unet"]["sha256"]


def test_profile_build_splits_the_unet_into_chained_blocks(tiny_builds, artifact_root):
    from host.build.builder import BuildOptions, build_variant
    from host.build.weights import resolve
    from models.config import get_variant

    weights = resolve("tiny", None, 0, None, str(artifact_root / "checkpoint-index.json"))
    manifest, path, _ = build_variant(get_variant("baseline"), weights,
                                      BuildOptions(root=artifact_root, components=("unet",), profile_blocks=True),
                                      log=lambda s: None)
    blocks = manifest["profile_blocks"]
    names = [b["name"] for b in blocks]
    assert names[0] == "conv_in" and names[-1] == "conv_out" and "mid_block" in names
    assert [i["name"] for i in blocks[0]["inputs"]] == ["sample", "t_emb"]
    assert blocks[-1]["outputs"][0]["name"] == "noise_pred"
    produced = {"sample", "t_emb", "context"}
    for b in blocks:  # every block's inputs were produced upstream
        assert {i["name"] for i in b["inputs"]} <= produced, b["name"]
        produced |= {o["name"] for o in b["outputs"]}
        assert (path / b["file"]).is_file()
    # The block weights add up to the whole UNet's (no block carries unused weights).
    total = sum(b["size_bytes"] for b in blocks)
    assert 0.9 < total / manifest["components"]["unet"]["size_bytes"] < 1.2


def test_int8_with_winograd_is_refused_up_front():
    from host.build import cli

    assert cli.main(["--model", "tiny", "--variant", "optimized", "--quant", "int8"]) == 2


@pytest.mark.parametrize("spec, quant, expected", [
    ("baseline", "fp32", ("baseline", "fp32")),
    ("baseline", "int8", ("baseline", "int8")),
    ("+flash-int8", "fp32", ("+flash", "int8")),   # the suffix wins over --quant
    ("+gn_gelu-fp16", "int8", ("+gn_gelu", "fp16")),
])
def test_variant_labels_read_back(spec, quant, expected):
    from host.build.cli import parse_variant, variant_label

    assert parse_variant(spec, quant) == expected
    assert parse_variant(variant_label(*expected)) == expected
    assert variant_label("optimized", "fp32") == "optimized"


@pytest.mark.parametrize("spec", ["turbo", "baseline-int4", "baseline-", "-int8", "optimized-int8-fp16"])
def test_unknown_variant_labels_are_named(spec):
    from host.build.cli import parse_variant
    from models.config import ConfigError

    with pytest.raises(ConfigError, match=f"unknown variant '{spec}'"):
        parse_variant(spec)


class _StopAtConversion(Exception):
    pass


@pytest.mark.parametrize("spec, component, builds, forwards", [
    ("baseline", "vae_decoder", 1, 1), ("baseline-int8", "vae_decoder", 1, 1), ("cpu", "vae_decoder", 2, 2),
    ("cpu", "text_encoder", 1, 1),  # the cpu set leaves the text encoder as it is
])
def test_a_variant_running_the_baseline_module_builds_and_runs_it_once(spec, component, builds, forwards, tmp_path,
                                                                       monkeypatch):
    """Up to conversion a build runs our PyTorch module once where the variant's module is the baseline's (the
    gates reuse its output), and the diffusers reference carries the very weight tensors, not copies."""
    import models.components as components
    from host.build import convert as convert_mod
    from host.build import reference
    from host.build.builder import BuildOptions, build_variant
    from host.build.cli import parse_variant
    from host.build.weights import resolve
    from models.config import get_variant

    made, ran, shared = [], [], []
    real_build, real_ref = components.build_module, reference.reference_module

    def build_module(*a, **k):
        m = real_build(*a, **k)
        m.register_forward_hook(lambda *_: ran.append(1))
        made.append(m)
        return m

    def reference_module(component, cfg, state):
        ref = real_ref(component, cfg, state)
        own = ref.state_dict()
        shared.append(all(own[k].data_ptr() == v.data_ptr() for k, v in state.items() if k in own))
        return ref

    def stop(component, module, *a, **k):
        assert module is made[-1]
        raise _StopAtConversion

    monkeypatch.setattr(components, "build_module", build_module)
    monkeypatch.setattr(reference, "reference_module", reference_module)
    monkeypatch.setattr(convert_mod, "convert", stop)
    weights = resolve("tiny", None, 0, None, str(tmp_path / "index.json"))
    with pytest.raises(_StopAtConversion):
        build_variant(get_variant(*parse_variant(spec, "fp32")), weights,
                      BuildOptions(root=tmp_path, components=(component,), progress=False), log=lambda s: None)
    assert (len(made), len(ran)) == (builds, forwards)
    assert shared == [True]


def test_a_component_build_records_where_its_time_and_memory_went(tmp_path):
    """Each stage's wall time and the process's high-water mark at its end (the store may hold components built
    before stages were recorded, so this builds one afresh)."""
    from host.build.builder import BuildOptions, build_variant
    from host.build.cli import parse_variant
    from host.build.weights import resolve
    from models.config import get_variant

    weights = resolve("tiny", None, 0, None, str(tmp_path / "index.json"))
    manifest, _, cached = build_variant(get_variant(*parse_variant("cpu", "fp32")), weights,
                                        BuildOptions(root=tmp_path, components=("vae_decoder",)), log=lambda s: None)
    comp = manifest["components"]["vae_decoder"]
    names = [r["stage"] for r in comp["stages"]]
    assert not cached and names == ["baseline module and weights", "baseline PyTorch run", "diffusers reference run",
                                    "variant module", "variant PyTorch run", "conversion", "LiteRT load and run",
                                    "model info and hash"]
    assert abs(sum(r["seconds"] for r in comp["stages"]) - comp["build_seconds"]) < 0.5
    hwm = [r["peak_rss_bytes"] for r in comp["stages"]]
    assert hwm == sorted(hwm) and hwm[-1] >= comp["peak_rss_bytes"] > 0
    assert all(0 < r["rss_bytes"] <= r["peak_rss_bytes"] for r in comp["stages"])


def test_a_converted_module_is_freed_once_the_caller_drops_it(tmp_path):
    """torch.export keeps its last trace in a module-level map that holds the traced module's weights; the build
    would carry the full-size UNet's into the VAE decoder's build."""
    import gc
    import weakref

    import torch

    from host.build.builder import release_export_state
    from host.build.convert import convert

    def converted(release: bool):
        module = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()).eval()
        weight = weakref.ref(module[0].weight)
        convert("vae_decoder", module, {"input": torch.randn(2, 64)}, "y", "fp32", tmp_path / "m.tflite")
        assert (tmp_path / "m.tflite").stat().st_size > 64 * 64 * 4
        if release:
            release_export_state()
        return weight

    held = converted(release=False)
    gc.collect()
    assert held() is not None  # what the release is for (if torch stops holding it, this says so)
    freed = converted(release=True)
    gc.collect()
    assert freed() is None


def test_a_verifying_build_runs_the_gate_a_no_verify_build_left_out(tmp_path, monkeypatch):
    """A --no-verify build is cached without the diffusers gate; the next verifying build runs that gate on the
    cached component (no second conversion), records it, and refuses the component if the gate fails."""
    from host.build import convert as convert_mod
    from host.build import reference
    from host.build.builder import BuildOptions, build_variant
    from host.build.cli import parse_variant
    from host.build.weights import resolve
    from models.config import get_variant

    conversions, references = [], []
    real_convert, real_ref = convert_mod.convert, reference.reference_module
    monkeypatch.setattr(convert_mod, "convert", lambda *a, **k: (conversions.append(a[0]), real_convert(*a, **k))[1])
    monkeypatch.setattr(reference, "reference_module",
                        lambda *a, **k: (references.append(a[0]), real_ref(*a, **k))[1])
    weights = resolve("tiny", None, 0, None, str(tmp_path / "index.json"))
    variant = get_variant(*parse_variant("cpu", "fp32"))

    def build(verify: bool):
        lines = []
        out = build_variant(variant, weights, BuildOptions(root=tmp_path, components=("vae_decoder",), verify=verify),
                            log=lines.append)
        return out, lines

    (manifest, folder, cached), _ = build(verify=False)
    comp = manifest["components"]["vae_decoder"]
    assert (conversions, references, cached) == (["vae_decoder"], [], False)
    assert comp["verified"] is False and "baseline_vs_diffusers" not in [g["check"] for g in comp["gates"]]

    (manifest, folder2, cached), lines = build(verify=True)
    assert (conversions, references, cached, folder2) == (["vae_decoder"], ["vae_decoder"], False, folder)
    assert any("built with --no-verify: running its diffusers gate" in s for s in lines)
    for comp in (manifest["components"]["vae_decoder"],
                 json.loads((folder / "manifest.json").read_text())["components"]["vae_decoder"]):
        assert comp["verified"] is True
        assert [g["check"] for g in comp["gates"]][0] == "baseline_vs_diffusers" and comp["gates"][0]["passed"]
    (_, _, cached), lines = build(verify=True)
    assert cached and references == ["vae_decoder"]

    # the gate failing on a cached component: the build fails, nothing is marked verified
    (tmp_path / "again").mkdir()
    monkeypatch.setattr(gates, "DIFFUSERS_REL_ERR", 0.0)
    opts = BuildOptions(root=tmp_path / "again", components=("vae_decoder",), verify=False)
    build_variant(variant, weights, opts, log=lambda s: None)
    opts.verify = True
    with pytest.raises(gates.GateError, match="gate baseline_vs_diffusers failed"):
        build_variant(variant, weights, opts, log=lambda s: None)
    again = json.loads(next((tmp_path / "again" / "components").glob("*/component.json")).read_text())
    assert again["verified"] is False
