"""prepare_run on the tiny build: the run folder it writes, and its one-line errors."""
from __future__ import annotations

import os

import numpy as np
import pytest

from host.errors import HarnessError
from host.protocol import NOISE_FILE, REQUEST_FILE, RunRequest
from host.protocol.jsonio import read_json
from host.request import RequestError, make_noise, prepare_run
from host.schedulers import make_table, timestep_embedding
from models.tokenizer import FallbackTokenizer


@pytest.fixture(scope="module")
def tiny(tiny_builds):
    return tiny_builds.get("baseline")


def _prepare(tmp_path, tiny, **kw):
    manifest, build_dir = tiny
    args = dict(prompt="a red fox", negative_prompt="blurry", seed=3, steps=3, scheduler="dpmpp_2m", size=64)
    return prepare_run(tmp_path / "run", manifest, build_dir, **{**args, **kw})


def test_prepare_run_writes_a_complete_run_folder(tmp_path, tiny):
    manifest, build_dir = tiny
    req = _prepare(tmp_path, tiny, runtime={"threads": 1, "repeats": 2}, run_id="fox_1")
    run = tmp_path / "run"
    assert RunRequest.from_dict(read_json(run / REQUEST_FILE)) == req
    assert req.run_id == "fox_1" and req.runtime.threads == 1 and req.runtime.repeats == 2 and req.runtime.warmup == 1
    # noise: numpy default_rng(seed).standard_normal, float32 little-endian NCHW
    noise = np.fromfile(run / NOISE_FILE, dtype="<f4").reshape(req.noise.shape)
    assert req.noise.shape == (1, 4, 8, 8)
    assert np.array_equal(noise, np.random.default_rng(3).standard_normal((1, 4, 8, 8), dtype=np.float32))
    assert np.array_equal(make_noise(3, (1, 4, 8, 8)), noise)
    # tokens: unconditional / negative first, conditional second
    tok = FallbackTokenizer(manifest["config"]["text_encoder"]["vocab_size"])
    assert req.prompt.tokens == (tuple(tok.encode("blurry")), tuple(tok.encode("a red fox")))
    assert req.prompt.tokenizer == "fallback"
    # scheduler table and t_emb rows
    assert req.scheduler.table == make_table("dpmpp_2m", 3)
    assert np.array_equal(np.asarray(req.scheduler.t_emb, np.float32), timestep_embedding(req.scheduler.table.timestep, 32))
    # models are hard links of the build's files
    for c, spec in req.models.items():
        assert os.path.samefile(run / "models" / spec.file, build_dir / spec.file)
        assert spec.sha256 == manifest["components"][c]["sha256"]
    assert (req.image.height, req.image.width) == (64, 64)


def test_default_size_is_the_built_one(tmp_path, tiny):
    req = _prepare(tmp_path, tiny, size=None)
    assert (req.image.height, req.image.width) == (64, 64)


@pytest.mark.parametrize("kw,culprit", [
    (dict(size=96), "size 96: must be a positive multiple of 64"),
    (dict(size=(64, 100)), "size 64x100: must be a positive multiple of 64"),
    (dict(size=128), "size 128 does not match the built models"),
    (dict(steps=0), "steps 0: must be a positive integer"),
    (dict(steps=2.5), "steps 2.5"),
    (dict(scheduler="pndm"), "scheduler 'pndm': unknown"),
    (dict(scheduler="ddim", karras=True), "scheduler 'ddim': karras"),
    (dict(seed=-1), "seed -1"),
])
def test_bad_arguments_fail_in_one_line(tmp_path, tiny, kw, culprit):
    with pytest.raises(RequestError) as e:
        _prepare(tmp_path, tiny, **kw)
    assert culprit in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, HarnessError)
    assert not (tmp_path / "run" / REQUEST_FILE).exists()


def test_bad_runtime_key_is_named(tmp_path, tiny):
    with pytest.raises(HarnessError, match=r"\$\.runtime\.thread: unexpected key"):
        _prepare(tmp_path, tiny, runtime={"thread": 4})


def test_missing_model_file_is_named(tmp_path, tiny):
    manifest, build_dir = tiny
    broken = {**manifest, "components": {**manifest["components"],
                                         "unet": {**manifest["components"]["unet"], "file": "nope.tflite"}}}
    with pytest.raises(RequestError, match=r"nope\.tflite: model file not found"):
        prepare_run(tmp_path / "run", broken, build_dir, prompt="x", steps=2, scheduler="euler")


def test_block_models_are_linked_and_described(tmp_path, tiny):
    _, build_dir = tiny
    # As host.build.blocks lists them: absolute paths, every file called model.tflite in its own folder.
    blocks = [{"name": "whole", "file": str(build_dir / "unet.tflite")},
              {"name": "again/unet", "file": "unet.tflite", "signature": "unet"}]
    req = _prepare(tmp_path, tiny, profiling={"per_block": True, "block_models": blocks})
    first, second = req.profiling.block_models
    assert (first.file, second.file) == ("blocks/whole.tflite", "blocks/again_unet.tflite")
    assert first.sha256 == second.sha256 == req.models["unet"].sha256
    assert set(first.inputs) == set(req.models["unet"].inputs) and first.outputs == req.models["unet"].outputs
    for b in (first, second):
        assert os.path.samefile(tmp_path / "run" / "models" / b.file, build_dir / "unet.tflite")
