"""``python -m host.export mediapipe``: the MediaPipe Image Generator weights folder, from every weights source."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from host.build.weights import resolve
from host.export import mediapipe as mp
from host.export.__main__ import main as export_main
from tests.models.ckpt_factory import (make_reference_models, to_ldm_state_dict, write_diffusers_folder,
                                       write_ldm_safetensors, write_tokenizer_dir)


@pytest.fixture(scope="module")
def ref():
    return make_reference_models(seed=3)


def _weights(tmp_path, checkpoint=None):
    return resolve("tiny", None if checkpoint is None else str(checkpoint), 0, None, str(tmp_path / "index.json"))


def _bins(folder):
    return {p.name[:-4]: p for p in folder.iterdir() if p.suffix == ".bin"}


def test_ldm_file_exports_every_generation_tensor_as_float16(ref, tmp_path):
    src = write_ldm_safetensors(tmp_path / "sd.safetensors", ref)
    out = mp.export(_weights(tmp_path, src), tmp_path / "bins", log=lambda s: None)
    bins = _bins(out)
    ldm = to_ldm_state_dict(ref)
    wanted = {k for k in ldm if not k.startswith(("first_stage_model.encoder.", "first_stage_model.quant_conv.",
                                                   "model_ema.")) and k not in ("betas", "alphas_cumprod")}
    assert wanted <= set(bins)
    extra = set(bins) - wanted
    assert extra == set(mp.ldm_schedule()) , extra  # the DDPM buffers, computed
    for key in wanted:
        want = ldm[key].to(torch.float32).numpy().astype("<f2").ravel()
        np.testing.assert_array_equal(mp.read_bin(bins[key]), want, err_msg=key)
    # The VAE attention projections are 1x1 convolutions in LDM files, as in the source.
    q = "first_stage_model.decoder.mid.attn_1.q.weight"
    assert ldm[q].ndim == 4 and mp.read_bin(bins[q]).size == ldm[q].numel()
    assert (out / mp.VOCAB_FILE).is_file() and mp.is_export(out)


def test_diffusers_folder_gives_the_same_bins_and_its_merges(ref, tmp_path):
    folder = write_diffusers_folder(tmp_path / "pipe", ref)
    single = write_ldm_safetensors(tmp_path / "sd.safetensors", ref)
    a = mp.export(_weights(tmp_path, folder), tmp_path / "from_folder", log=lambda s: None)
    b = mp.export(_weights(tmp_path, single), tmp_path / "from_file", log=lambda s: None)
    ba, bb = _bins(a), _bins(b)
    assert set(ba) == set(bb)
    for key in ba:
        np.testing.assert_array_equal(mp.read_bin(ba[key]), mp.read_bin(bb[key]), err_msg=key)
    assert (a / mp.VOCAB_FILE).read_text() == (folder / "tokenizer" / "merges.txt").read_text()


def test_random_weights_round_trip_and_synthetic_vocab(tmp_path):
    logs = []
    out = mp.export(_weights(tmp_path), tmp_path / "bins", log=logs.append)
    assert any("synthetic merge list" in l for l in logs)
    lines = (out / mp.VOCAB_FILE).read_text().splitlines()
    assert len(lines) == mp.N_MERGES + 1 and len(set(lines[1:])) == mp.N_MERGES
    assert all(len(l.split(" ")) == 2 for l in lines[1:])
    # The bins load back through the checkpoint loader's key conversions to the same weights.
    from models.checkpoint import _convert_ldm_unet
    from models.components import build_module, random_state_dict

    tensors = mp.ldm_tensors(_weights(tmp_path))
    prefix = "model.diffusion_model."
    unet = _convert_ldm_unet({k[len(prefix):]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith(prefix)})
    expect = random_state_dict(build_module("unet", _weights(tmp_path).config), 0)
    assert set(unet) == set(expect)
    for k in expect:
        torch.testing.assert_close(unet[k], expect[k])
    for ours, ldm in (("conv_in.weight", "input_blocks.0.0.weight"),
                      ("down_blocks.0.resnets.0.conv1.weight", "input_blocks.1.0.in_layers.2.weight"),
                      ("up_blocks.1.attentions.0.proj_in.weight", "output_blocks.2.1.proj_in.weight")):
        np.testing.assert_array_equal(mp.read_bin(out / f"{prefix}{ldm}.bin"), expect[ours].numpy().astype("<f2").ravel())


def test_schedule_matches_sd1_training_schedule():
    s = mp.ldm_schedule()
    assert s["betas"][0] == pytest.approx(0.00085) and s["betas"][-1] == pytest.approx(0.012)
    from diffusers import DDPMScheduler

    d = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    np.testing.assert_allclose(s["alphas_cumprod"], d.alphas_cumprod.numpy(), rtol=1e-5)


def test_float16_overflow_and_bad_input_are_named(tmp_path, monkeypatch, capsys):
    real = mp.ldm_tensors

    def huge(weights):
        t = real(weights)
        t["model.diffusion_model.out.2.weight"] = t["model.diffusion_model.out.2.weight"] * 0 + 1e6
        return t

    monkeypatch.setattr(mp, "ldm_tensors", huge)
    with pytest.raises(mp.ExportError, match=r"model\.diffusion_model\.out\.2\.weight: .* float16"):
        mp.export(_weights(tmp_path), tmp_path / "bins", log=lambda s: None)
    assert not (tmp_path / "bins").exists() and not list(tmp_path.glob(".bins.*"))  # nothing half written
    monkeypatch.undo()
    assert export_main(["mediapipe", "--model", "tiny", "--checkpoint", str(tmp_path / "nope.ckpt"),
                        "--out", str(tmp_path / "x")]) == 2
    assert "nope.ckpt: checkpoint not found" in capsys.readouterr().err
    (tmp_path / "vocab.txt").write_text("not a merge list at all\n")
    assert export_main(["mediapipe", "--model", "tiny", "--vocab", str(tmp_path / "vocab.txt"),
                        "--out", str(tmp_path / "x")]) == 2
    assert "vocab.txt: not a BPE merge list" in capsys.readouterr().err


def test_cli_and_cache(tmp_path):
    tok = write_tokenizer_dir(tmp_path / "tok")
    assert export_main(["mediapipe", "--model", "tiny", "--vocab", str(tok / "merges.txt"),
                        "--out", str(tmp_path / "bins")]) == 0
    assert (tmp_path / "bins" / mp.VOCAB_FILE).read_text() == (tok / "merges.txt").read_text()
    w = _weights(tmp_path)
    first = mp.cached_export(w, tmp_path / "store", log=lambda s: None)
    stamp = (first / mp.MANIFEST).stat().st_mtime_ns
    assert mp.cached_export(w, tmp_path / "store", log=lambda s: None) == first
    assert (first / mp.MANIFEST).stat().st_mtime_ns == stamp
