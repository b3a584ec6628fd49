"""models.checkpoint on tiny checkpoints written in the real formats (see ckpt_factory)."""
from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the hub

import pytest
import torch

from models.checkpoint import Checkpoint, CheckpointError, check_against, load_checkpoint, match_state_dict
from models.config import tiny
from tests.models import ckpt_factory as cf


@pytest.fixture(scope="module")
def ref() -> cf.ReferenceModels:
    return cf.make_reference_models(tiny(), seed=0)


@pytest.fixture(scope="module")
def expected(ref) -> dict[str, dict[str, torch.Tensor]]:
    return ref.state_dicts()


@pytest.fixture(scope="module")
def folder(ref, tmp_path_factory):
    return cf.write_diffusers_folder(tmp_path_factory.mktemp("pipe") / "tiny-sd", ref)


@pytest.fixture(scope="module")
def ldm_file(ref, tmp_path_factory):
    return cf.write_ldm_safetensors(tmp_path_factory.mktemp("ldm") / "tiny.safetensors", ref)


def assert_same(ckpt: Checkpoint, expected, cast: torch.dtype | None = None) -> None:
    for comp in ("text_encoder", "unet", "vae_decoder"):
        got, want = getattr(ckpt, comp), expected[comp]
        assert sorted(got) == sorted(want), f"{comp}: key sets differ: {sorted(set(got) ^ set(want))[:5]}"
        for k, v in want.items():
            assert got[k].dtype == torch.float32, k
            w = v.to(cast).float() if cast is not None else v
            assert torch.equal(got[k], w), f"{comp}: {k} differs"


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def test_diffusers_folder(folder, expected):
    ckpt = load_checkpoint(folder)
    assert ckpt.format == "diffusers" and ckpt.path == str(folder)
    assert_same(ckpt, expected)
    assert ckpt.config == dataclasses.replace(tiny(), name=ckpt.config.name)
    assert ckpt.config.name == "tiny-sd"
    assert ckpt.tokenizer_dir == str(folder / "tokenizer")
    assert ckpt.dtype == torch.float32
    assert len(ckpt.sha256) == 64 and ckpt.sha256 == load_checkpoint(folder).sha256


def test_diffusers_folder_fp16_variant_with_text_model_prefix(ref, expected, tmp_path):
    folder = cf.write_diffusers_folder(tmp_path / "pipe16", ref, fp16_variant=True, text_model_prefix=True,
                                       with_tokenizer=False)
    assert not (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    ckpt = load_checkpoint(folder)
    assert ckpt.dtype == torch.float16
    assert ckpt.tokenizer_dir is None
    assert_same(ckpt, expected, cast=torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ldm_safetensors(ref, expected, tmp_path, dtype):
    path = cf.write_ldm_safetensors(tmp_path / "model.safetensors", ref, dtype=dtype)
    ckpt = load_checkpoint(path, tiny())
    assert ckpt.format == "safetensors" and ckpt.config is None and ckpt.tokenizer_dir is None
    assert ckpt.dtype == dtype
    assert_same(ckpt, expected, cast=dtype if dtype != torch.float32 else None)


@pytest.mark.parametrize("wrap,old_text_keys,ext", [(True, False, ".ckpt"), (False, True, ".pt")])
def test_ldm_ckpt(ref, expected, tmp_path, wrap, old_text_keys, ext):
    path = cf.write_ldm_ckpt(tmp_path / f"model{ext}", ref, wrap=wrap, old_text_keys=old_text_keys)
    ckpt = load_checkpoint(path, tiny())
    assert ckpt.format == "ckpt"
    assert_same(ckpt, expected)


def test_sha256_of_single_file(ldm_file):
    import hashlib

    assert load_checkpoint(ldm_file, tiny()).sha256 == hashlib.sha256(ldm_file.read_bytes()).hexdigest()


def test_loaded_weights_fit_modules(folder):
    """check_against loads into modules named like ours (text_model.*, post_quant_conv + decoder)."""
    ckpt = load_checkpoint(folder)
    fresh = cf.make_reference_models(tiny(), seed=1)
    text = torch.nn.Module()
    text.text_model = fresh.text_encoder  # CLIPTextModel's children under the v4 "text_model." name
    vae = torch.nn.Module()
    vae.post_quant_conv, vae.decoder = fresh.vae.post_quant_conv, fresh.vae.decoder
    check_against(ckpt, {"text_encoder": text, "unet": fresh.unet, "vae_decoder": vae})
    for k, v in fresh.unet.state_dict().items():
        assert torch.equal(v, ckpt.unet[k])
    assert torch.equal(vae.decoder.mid_block.attentions[0].to_q.weight, ckpt.vae_decoder[
        "decoder.mid_block.attentions.0.to_q.weight"])


# ---------------------------------------------------------------------------------------------
# Refusals and validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_is_refused(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = cf.write_malicious_ckpt(tmp_path / "evil.ckpt", marker, legacy=legacy)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and "refused" in msg and "\n" not in msg
    if not legacy:
        assert "system" in msg
    assert not marker.exists()


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_unknown_extension(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"model\.onnx.*unknown checkpoint type '\.onnx'"):
        load_checkpoint(p)


@pytest.mark.parametrize("cut", ["data", "header", "tiny"])
def test_truncated_safetensors(ldm_file, tmp_path, cut):
    data = ldm_file.read_bytes()
    n = int.from_bytes(data[:8], "little")
    keep = {"data": len(data) - 100, "header": 8 + n // 2, "tiny": 5}[cut]
    p = tmp_path / "cut.safetensors"
    p.write_bytes(data[:keep])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p, tiny())
    msg = str(e.value)
    assert msg.startswith(str(p) + ": ") and "\n" not in msg
    assert ("truncated" in msg) or ("only 5 bytes" in msg)


def test_corrupt_safetensors_header(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: .*not valid JSON"):
        load_checkpoint(p)


def test_corrupt_ckpt(tmp_path):
    p = tmp_path / "junk.ckpt"
    p.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match=r"junk\.ckpt: "):
        load_checkpoint(p)


def test_not_an_sd_checkpoint(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "other.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(2, 2)}, p)
    with pytest.raises(CheckpointError, match=r"other\.safetensors: not a Stable Diffusion 1\.x checkpoint.*"
                                              r"'encoder\.layer\.0\.weight'"):
        load_checkpoint(p)


def test_sd2_and_incomplete_are_named(ref, tmp_path):
    from safetensors.torch import save_file

    sd = cf.to_ldm_state_dict(ref, extras=False)
    no_text = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}
    save_file(no_text, tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match=r"no text encoder weights \(cond_stage_model\.transformer\.\*\)"):
        load_checkpoint(tmp_path / "a.safetensors", tiny())
    save_file({**no_text, "cond_stage_model.model.token_embedding.weight": torch.zeros(4, 2)},
              tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match="SD 2.x"):
        load_checkpoint(tmp_path / "b.safetensors", tiny())


def test_single_file_defaults_to_sd14(ldm_file):
    """A single file carries no config: it must be full-size SD 1.x unless the caller says otherwise."""
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ldm_file)
    assert str(e.value) == (f"{ldm_file}: unet: conv_in.weight has shape (32, 4, 3, 3), "
                            "the model config 'sd14' expects (320, 4, 3, 3)")


def test_depth_mismatch_against_config(ldm_file):
    cfg = tiny()
    deeper = dataclasses.replace(cfg, text_encoder=dataclasses.replace(cfg.text_encoder, num_hidden_layers=1))
    with pytest.raises(CheckpointError, match=r"text_model\.encoder\.layers\.1\.\* .*num_hidden_layers=1"):
        load_checkpoint(ldm_file, deeper)


def test_folder_missing_weights(ref, tmp_path):
    folder = cf.write_diffusers_folder(tmp_path / "pipe", ref, with_tokenizer=False)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"pipe: unet/ has no weights file"):
        load_checkpoint(folder)


# ---------------------------------------------------------------------------------------------
# match_state_dict
# ---------------------------------------------------------------------------------------------


def test_wrong_architecture_names_key_and_shapes(folder):
    from diffusers import UNet2DConditionModel

    ckpt = load_checkpoint(folder)
    u = tiny().unet
    narrow = UNet2DConditionModel(
        sample_size=u.sample_size, block_out_channels=(16, 16, 32, 32), layers_per_block=1, attention_head_dim=4,
        cross_attention_dim=32, norm_num_groups=8,
    )
    with pytest.raises(CheckpointError) as e:
        check_against(ckpt, {"unet": narrow})
    assert str(e.value) == (f"{folder}: unet: conv_in.weight has shape (32, 4, 3, 3), "
                            "the model expects (16, 4, 3, 3)")


def test_missing_unexpected_and_harmless_keys(ref):
    module = cf.make_reference_models(tiny(), seed=2).unet
    state = dict(ref.unet.state_dict())
    first = next(iter(state))
    with pytest.raises(CheckpointError, match=rf"^unet: {first} is missing from the checkpoint \(1 missing key\)$"):
        match_state_dict("unet", module, {k: v for k, v in state.items() if k != first})
    with pytest.raises(CheckpointError, match=r"^unet: extra\.weight is in the checkpoint but not in the model"):
        match_state_dict("unet", module, {**state, "extra.weight": torch.zeros(1)})
    match_state_dict("unet", module, {**state, "text_model.embeddings.position_ids": torch.arange(3)})
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())


# ---------------------------------------------------------------------------------------------
# Other depths, and the full SD 1.x layout (shapes only, on the meta device)
# ---------------------------------------------------------------------------------------------


def test_ldm_round_trip_with_two_layers_per_block(tmp_path):
    cfg = tiny()
    cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, layers_per_block=2),
                              vae=dataclasses.replace(cfg.vae, layers_per_block=2))
    ref = cf.make_reference_models(cfg, seed=3)
    ckpt = load_checkpoint(cf.write_ldm_safetensors(tmp_path / "lpb2.safetensors", ref), cfg)
    assert_same(ckpt, ref.state_dicts())


def test_full_size_sd14_layout_converts():
    """The LDM -> diffusers key mapping at SD 1.4/1.5 size, checked on shapes without allocating weights."""
    from models import checkpoint as C
    from models.config import sd14

    with torch.device("meta"):
        ref = cf.make_reference_models(sd14())
    raw = cf.to_ldm_state_dict(ref)
    got = {
        "unet": C._convert_ldm_unet({k[len(C.LDM_UNET):]: v for k, v in raw.items() if k.startswith(C.LDM_UNET)}),
        "vae_decoder": C._convert_ldm_vae({k[len(C.LDM_VAE):]: v for k, v in raw.items()
                                           if k.startswith(C.LDM_VAE)}),
        "text_encoder": C._normalize_text_keys({k[len(C.LDM_TEXT):]: v for k, v in raw.items()
                                                if k.startswith(C.LDM_TEXT)}, C.LDM_TEXT),
    }
    for comp, want in ref.state_dicts().items():
        assert sorted(got[comp]) == sorted(want), comp
        assert all(tuple(got[comp][k].shape) == tuple(v.shape) for k, v in want.items()), comp
    assert len(got["unet"]) == 686
    ckpt = Checkpoint("sd14.safetensors", "safetensors", got["text_encoder"], got["unet"], got["vae_decoder"],
                      None, None, "", torch.float32)
    assert C.check_config(ckpt, sd14()) is None
