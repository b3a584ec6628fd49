"""``python -m host.build``: cache hits, atomic writes, checkpoints and bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from host.build import cli
from host.build import convert as convert_mod
from tests.models import ckpt_factory

REPO = Path(__file__).resolve().parents[3]


def run_cli(args, capsys):
    rc = cli.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_repeat_build_is_a_cache_hit_without_conversion(tiny_builds, artifact_root, capsys, monkeypatch):
    tiny_builds.get("baseline")

    def boom(*a, **k):
        raise AssertionError("a cache hit must not convert")

    monkeypatch.setattr(convert_mod, "convert", boom)
    rc, out, err = run_cli(["--model", "tiny", "--variant", "baseline", "--artifacts", str(artifact_root)], capsys)
    assert rc == 0, err
    assert "[cached]" in out
    assert "random weights" in err
    assert (artifact_root / "latest" / "tiny" / "baseline" / "manifest.json").is_file()


def test_cache_hit_path_does_not_import_torch(tiny_builds, artifact_root):
    tiny_builds.get("baseline")
    code = ("import sys; from host.build.cli import main; rc = main(['--model','tiny','--variant','baseline',"
            f"'--artifacts',{str(artifact_root)!r}]); assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, capsys, monkeypatch):
    def dies_midway(component, module, inputs, output, quantization, out_path):
        out_path.write_bytes(b"partial tflite")
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_mod, "convert", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--model", "tiny", "--variant", "baseline", "--components", "text_encoder", "--artifacts", str(tmp_path)])
    capsys.readouterr()
    comps = tmp_path / "components"
    assert not [p for p in comps.iterdir() if not p.name.startswith(".")]
    assert not (tmp_path / "builds").exists() or not any((tmp_path / "builds").iterdir())


@pytest.mark.parametrize("args, culprit", [
    (["--model", "sd15xl"], "sd15xl"),
    (["--model", "tiny", "--variant", "turbo"], "turbo"),
    (["--model", "tiny", "--quant", "int4"], "int4"),
    (["--model", "tiny", "--winograd-unet", "3"], "winograd_unet"),
    (["--model", "tiny", "--checkpoint", "/nonexistent/sd14.safetensors"], "/nonexistent/sd14.safetensors"),
    (["--model", "tiny", "--checkpoint", "weights.onnx"], "weights.onnx"),
    (["--model", "tiny", "--ladder", "--flash"], "--ladder"),
])
def test_bad_input_is_one_line_naming_the_culprit(args, culprit, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.onnx").write_bytes(b"x")
    rc, out, err = run_cli(args + ["--artifacts", str(tmp_path / "a")], capsys)
    assert rc == 2
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and culprit in lines[0], err
    assert "Traceback" not in err


def test_truncated_checkpoint_is_rejected(tmp_path, capsys):
    models = ckpt_factory.make_reference_models()
    path = tmp_path / "tiny.safetensors"
    ckpt_factory.write_ldm_safetensors(path, models)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    rc, out, err = run_cli(["--model", "tiny", "--checkpoint", str(path), "--components", "text_encoder",
                            "--artifacts", str(tmp_path / "a")], capsys)
    assert rc == 2 and str(path) in err and "Traceback" not in err


def test_checkpoint_of_another_architecture_names_key_and_shapes(tmp_path, capsys):
    from models.config import tiny
    import dataclasses

    other = tiny()
    other = dataclasses.replace(other, unet=dataclasses.replace(other.unet, block_out_channels=(16, 32, 64, 64)))
    models = ckpt_factory.make_reference_models(other)
    path = tmp_path / "other.safetensors"
    ckpt_factory.write_ldm_safetensors(path, models)
    rc, out, err = run_cli(["--model", "tiny", "--checkpoint", str(path), "--components", "unet",
                            "--artifacts", str(tmp_path / "a")], capsys)
    assert rc == 2
    assert "unet" in err and "(16," in err and "(32," in err, err


def test_build_from_a_diffusers_folder_uses_its_config_tokenizer_and_weights(tmp_path, capsys):
    models = ckpt_factory.make_reference_models(seed=7)
    folder = tmp_path / "dog-finetune"
    ckpt_factory.write_diffusers_folder(folder, models)
    rc, out, err = run_cli(["--model", "sd14", "--variant", "baseline", "--checkpoint", str(folder),
                            "--components", "text_encoder", "--artifacts", str(tmp_path / "a"),
                            "--out", str(tmp_path / "out")], capsys)
    assert rc == 0, err
    assert "random weights" not in err
    import json

    manifest = json.loads((tmp_path / "out" / "baseline" / "manifest.json").read_text())
    assert manifest["model"] == "dog-finetune"
    assert manifest["config"]["unet"]["block_out_channels"] == [32, 32, 64, 64]
    assert manifest["weights"]["kind"] == "checkpoint" and manifest["weights"]["warning"] is None
    assert manifest["tokenizer"]["kind"] == "clip-bpe"
    assert (tmp_path / "out" / "baseline" / "text_encoder.tflite").is_file()
    te = manifest["components"]["text_encoder"]
    assert {g["check"] for g in te["gates"]} == {"baseline_vs_diffusers", "tflite_vs_torch"}


def test_single_file_checkpoint_builds_the_decoder(tmp_path, capsys):
    models = ckpt_factory.make_reference_models(seed=3)
    path = tmp_path / "tiny.ckpt"
    ckpt_factory.write_ldm_ckpt(path, models)
    rc, out, err = run_cli(["--model", "tiny", "--variant", "baseline", "--checkpoint", str(path),
                            "--components", "vae_decoder", "--artifacts", str(tmp_path / "a")], capsys)
    assert rc == 0, err
    assert "vae_decoder" in out and "baseline_vs_diffusers" in out
