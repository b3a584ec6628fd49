"""``python -m host.bench runtime`` on a tiny model, and the CompiledModel wrapper it measures."""
from __future__ import annotations

import json

import numpy as np

from host.bench import runtime
from host.runtime import CompiledLiteRtModel, LiteRtModel
from tests.host.mappings import mapped_rss as _mapped_rss
from tests.host.mappings import two_mappings


def test_compiled_model_matches_the_interpreter(tiny_builds, tmp_path):
    _, build = tiny_builds.get("baseline")
    path = str(build / "unet.tflite")
    a = LiteRtModel(path)
    cache = tmp_path / "unet.xnnpack_cache"
    b = CompiledLiteRtModel(path, weight_cache=str(cache))
    assert a.signature == b.signature and a.outputs == {k: (tuple(int(x) for x in s), d) for k, (s, d) in b.outputs.items()}
    rng = np.random.default_rng(1)
    feed = {n: rng.standard_normal(s).astype(d) for n, (s, d) in b.inputs.items()}
    out = next(iter(a.outputs))
    np.testing.assert_allclose(b.run(**feed)[out], a.run(**feed)[out], rtol=1e-5, atol=1e-6)
    assert cache.is_file() and cache.stat().st_size > 0  # the packed weights went to the cache file
    c = CompiledLiteRtModel(path, weight_cache=str(cache))  # the second load maps them
    np.testing.assert_allclose(c.run(**feed)[out], a.run(**feed)[out], rtol=1e-5, atol=1e-6)


def test_runtime_benchmark_prints_and_saves_every_config(tiny_builds, tmp_path, capsys):
    _, build = tiny_builds.get("baseline")
    out = tmp_path / "rt.json"
    assert runtime.main(["--file", str(build / "unet.tflite"), "--invokes", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    labels = [r["config"] for r in doc["results"]]
    assert labels == ["interpreter", "compiled", "compiled-cache (cold)", "compiled-cache (warm)"]
    for r in doc["results"]:
        assert len(r["invoke_s"]) == 2 and r["peak_rss_bytes"] > 0 and r["rel_err_vs_interpreter"] <= 1e-5
    assert doc["results"][3]["cache_bytes"] > 0
    text = capsys.readouterr().out
    assert "peak RSS / file" in text and "compiled-cache (warm)" in text


def test_a_weight_cache_that_would_not_fit_is_refused_in_one_line(tiny_builds, tmp_path, monkeypatch):
    # XNNPACK aborts the whole process when it cannot write the cache (it did on a full disk).
    import shutil

    import pytest

    from host.errors import HarnessError
    from host.runtime import CACHE_ENV, open_model

    _, build = tiny_builds.get("baseline")
    path = str(build / "unet.tflite")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1 << 20))
    with pytest.raises(HarnessError, match=rf"^{tmp_path}: 0.0 GiB free, the XNNPACK weight cache of unet.tflite .*{CACHE_ENV}=off"):
        open_model(path, env={CACHE_ENV: str(tmp_path)})
    assert not any(p.suffix != ".lock" for p in tmp_path.iterdir())


def test_released_file_pages_leave_the_process_but_not_the_data(tmp_path):
    from host.runtime import release_file_pages

    with two_mappings(tmp_path, 8 << 20) as m:
        assert _mapped_rss(m.ro) >= 8 << 20 and _mapped_rss(m.rw) >= 8 << 20
        assert release_file_pages(str(m.ro)) >= 8 << 20 and release_file_pages(str(m.rw)) == 0
        assert _mapped_rss(m.ro) == 0 and _mapped_rss(m.rw) >= 8 << 20
        assert m.read_sum() == int(m.data.sum()) and m.edited[:4] == b"edit"  # read back from the file
    assert release_file_pages(str(tmp_path / "not-mapped.bin")) == 0


def test_a_loaded_winograd_model_holds_none_of_its_file_and_computes_the_same(tiny_builds, tmp_path, monkeypatch):
    import host.runtime

    _, build = tiny_builds.get("cpu")
    path = str(build / "unet.tflite")
    cache = tmp_path / "unet.xnnpack_cache"
    model = CompiledLiteRtModel(path, weight_cache=str(cache))
    assert model.released_bytes > 0 and _mapped_rss(path) < (64 << 10)
    assert model.load_watch.skipped == "" and model.load_watch.passes >= 1  # the native watch ran during the load
    monkeypatch.setattr(host.runtime, "release_file_pages", lambda p: 0)
    kept = CompiledLiteRtModel(path, weight_cache=str(cache))
    assert kept.released_bytes == 0 and _mapped_rss(path) > 0
    rng = np.random.default_rng(2)
    feed = {n: rng.standard_normal(s).astype(d) for n, (s, d) in model.inputs.items()}
    out = next(iter(model.outputs))
    first = model.run(**feed)[out]
    np.testing.assert_array_equal(first, kept.run(**feed)[out])
    assert np.isfinite(first).all()


def test_trim_heap_returns_the_holes_a_freed_model_leaves():
    from host.runtime import trim_heap

    def anon() -> int:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))

    # many blocks under glibc's mmap threshold come from the heap; freeing all but the last leaves holes below
    # the heap top, which free() does not give back
    blocks = [np.ones(96 << 10, np.uint8) for _ in range(3000)]
    pin = blocks[-1]
    del blocks
    before = anon()
    assert trim_heap()
    after = anon()
    assert before - after > (150 << 20), (before, after)
    assert pin[0] == 1


def test_a_bad_page_watch_setting_stops_the_load_in_one_line(tiny_builds, monkeypatch):
    import pytest

    from host.errors import HarnessError
    from host.native import WATCH_ENV

    _, build = tiny_builds.get("baseline")
    monkeypatch.setenv(WATCH_ENV, "-5")
    with pytest.raises(HarnessError, match=rf"^{WATCH_ENV}='-5': expected 'off' or an interval in milliseconds"):
        CompiledLiteRtModel(str(build / "unet.tflite"))
