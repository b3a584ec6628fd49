"""Cache keys: which sources decide which component's bytes."""
from __future__ import annotations

import pytest

from host.build import cache
from host.build.builder import component_key
from host.build.weights import WeightsSource
from models.config import get_model_config, get_variant


@pytest.fixture
def weights():
    return WeightsSource(kind="random", identity="random-seed-0", config=get_model_config("tiny"))


def _keys(weights, variant):
    return {c: component_key(c, weights.config, variant, weights) for c in ("text_encoder", "unet", "vae_decoder")}


def test_winograd_source_is_in_the_keys_of_winograd_components_only(weights, monkeypatch):
    direct, wino = get_variant("baseline"), get_variant("cpu")
    unet_only = get_variant("cpu", winograd_decoder=0)
    before = {v.name + str(v.opts.winograd_decoder): _keys(weights, v) for v in (direct, wino, unet_only)}
    monkeypatch.setattr(cache, "scoped_hash", lambda source: "edited")
    after = {v.name + str(v.opts.winograd_decoder): _keys(weights, v) for v in (direct, wino, unet_only)}
    assert after["baseline0"] == before["baseline0"]
    assert after["cpu4"]["text_encoder"] == before["cpu4"]["text_encoder"]
    assert after["cpu4"]["unet"] != before["cpu4"]["unet"] and after["cpu4"]["vae_decoder"] != before["cpu4"]["vae_decoder"]
    assert after["custom0"]["vae_decoder"] == before["custom0"]["vae_decoder"]
    assert after["custom0"]["unet"] != before["custom0"]["unet"]


def test_scoped_sources_stay_out_of_the_code_hash(monkeypatch, tmp_path):
    for rel in ("models/a.py", "models/winograd.py", "host/build/convert.py", "host/build/gates.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    monkeypatch.setattr(cache, "_ROOT", tmp_path)
    cache.code_hash.cache_clear()
    try:
        first = cache.code_hash()
        cache.code_hash.cache_clear()
        (tmp_path / "models/winograd.py").write_text("x = 2\n")
        assert cache.code_hash() == first
        cache.code_hash.cache_clear()
        (tmp_path / "models/a.py").write_text("x = 2\n")
        assert cache.code_hash() != first
    finally:
        cache.code_hash.cache_clear()
    with pytest.raises(ValueError, match="not a scoped source"):
        cache.scoped_hash("models/a.py")
