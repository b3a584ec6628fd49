"""The farm config (validated on load) and the history store (append-only parquet, shared by several writers)."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from host.farm import history
from host.farm.__main__ import main as farm_main
from host.farm.config import FarmConfigError, load_config

GOOD = """
[farm]
model = "tiny"
ladder = true
repeats = 2
out = "o"
history = "h"

[[devices]]
name = "bench-1"
profile = "host"

[[devices]]
profile = "s23"
serial = "R5CT40ABCDE"

[[devices]]
name = "farm-pixel"
profile = "pixel8"
endpoint = "10.0.0.5:5555"

[thresholds]
window = 5
[thresholds.metrics]
peak_rss_bytes = 0.02
"""


def test_variants_take_quantization_labels(tmp_path):
    f = tmp_path / "farm.toml"
    f.write_text(GOOD.replace("ladder = true", 'variants = ["baseline", "cpu", "+gn_gelu-int8"]'))
    assert load_config(f).variants == ("baseline", "cpu", "+gn_gelu-int8")


def test_good_config(tmp_path):
    f = tmp_path / "farm.toml"
    f.write_text(GOOD)
    cfg = load_config(f)
    assert cfg.variants == ("baseline", "+gn_gelu", "+softmax", "+flash", "+winograd")
    assert [d.device_arg() for d in cfg.devices] == ["host", "s23@R5CT40ABCDE", "pixel8@10.0.0.5:5555"]
    assert [d.name for d in cfg.devices] == ["bench-1", "s23", "farm-pixel"]
    assert cfg.out == tmp_path / "o" and cfg.history == tmp_path / "h"
    assert cfg.thresholds.window == 5 and cfg.thresholds.rel_for("peak_rss_bytes") == 0.02
    assert cfg.thresholds.rel_for("end_to_end_s") == 0.05 and cfg.steps == 20 and cfg.size == 512


@pytest.mark.parametrize("edit, culprit", [
    (("[thresholds]", "[thresholds]\nwindw = 3"), "thresholds.windw"),
    (("ladder = true", 'variants = ["baseline", "turbo"]'), "farm.variants[1]"),
    (("ladder = true", 'variants = ["baseline", "cpu-int4"]'), "farm.variants[1]"),
    (("ladder = true", 'variants = ["baseline", 3]'), "farm.variants[1]"),
    (("ladder = true", "ladder = true\nvariants = [\"baseline\"]"), "farm.ladder"),
    (("repeats = 2", "repeats = 0"), "farm.repeats"),
    (("repeats = 2", "repeats = \"2\""), "farm.repeats"),
    (("repeats = 2", "size = 500"), "farm.size"),
    (('name = "bench-1"', 'name = "farm-pixel"'), "devices[2].name"),
    (('profile = "s23"', 'profile = "nokia3310"'), "devices[1].profile"),
    (('endpoint = "10.0.0.5:5555"', 'endpoint = "10.0.0.5"'), "devices[2].endpoint"),
    (('serial = "R5CT40ABCDE"', 'serial = "R5CT; rm -rf /"'), "devices[1].serial"),
    (("peak_rss_bytes = 0.02", "speed = 0.02"), "thresholds.metrics.speed"),
    (("[farm]", "[farms]\n[farm]"), "farms"),
])
def test_bad_config_names_file_and_key(tmp_path, edit, culprit, capsys):
    f = tmp_path / "farm.toml"
    f.write_text(GOOD.replace(*edit, 1))
    with pytest.raises(FarmConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(f"{f}: {culprit}"), str(e.value)
    assert farm_main(["run", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and culprit in err


def test_missing_or_broken_config(tmp_path, capsys):
    assert farm_main(["run", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: no such farm config" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[farm\n")
    assert farm_main(["run", "--config", str(tmp_path / "bad.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    (tmp_path / "empty.toml").write_text("[farm]\nmodel = 'tiny'\n")
    assert farm_main(["run", "--config", str(tmp_path / "empty.toml")]) == 2
    assert "devices: no [[devices]]" in capsys.readouterr().err
    assert farm_main(["report", "--history", str(tmp_path / "nothing")]) == 2
    assert "no farm history here" in capsys.readouterr().err


def _row(i: int, variant: str = "+flash") -> dict:
    return {"night": "2026-11-01", "device": "s23 a", "variant": variant, "run_id": "r", "metric": "layer_s",
            "layer": f"up_blocks.{i % 4}", "repeat": None, "value": 0.5 + i, "unit": "s"}


def test_append_and_read_keep_dtypes_and_decode_partitions(tmp_path):
    history.ensure(tmp_path)
    files = history.append(tmp_path, "metrics", [_row(0), _row(1), _row(2, "baseline")])
    assert len(files) == 2 and all(f.is_file() for f in files)
    assert any("variant=%2Bflash" in str(f) for f in files)
    df = history.read(tmp_path, "metrics")
    assert sorted(df["variant"]) == ["+flash", "+flash", "baseline"] and set(df["device"]) == {"s23 a"}
    assert str(df["repeat"].dtype) == "Int64" and df["repeat"].isna().all()
    assert df["schema_version"].tolist() == [history.SCHEMA_VERSION] * 3
    assert history.read(tmp_path, "attempts").empty
    history.append(tmp_path, "metrics", [{**_row(3), "value": math.inf}])
    assert math.isinf(history.read(tmp_path, "metrics")["value"].max())


def test_schema_version_is_checked(tmp_path):
    history.ensure(tmp_path)
    (tmp_path / "SCHEMA.json").write_text('{"schema_version": 99}')
    with pytest.raises(history.HistoryError, match="schema_version 99"):
        history.ensure(tmp_path)


def test_a_damaged_visible_file_is_named(tmp_path):
    history.ensure(tmp_path)
    (f,) = history.append(tmp_path, "metrics", [_row(0)])
    f.write_bytes(b"not parquet")
    with pytest.raises(history.HistoryError, match=str(f)):
        history.read(tmp_path, "metrics")


def test_several_processes_append_to_one_store(tmp_path):
    """Two hosts sharing one history location: independent processes append at the same time."""
    history.ensure(tmp_path)
    code = ("import sys; from host.farm import history\n"
            "for i in range(20):\n"
            "    history.append(sys.argv[1], 'metrics', [{'night': '2026-11-02', 'device': sys.argv[2], "
            "'variant': 'baseline', 'run_id': sys.argv[2], 'metric': 'end_to_end_s', 'repeat': i, 'value': i}])\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), name], cwd=Path(__file__).parents[3])
             for name in ("host-a", "host-b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    df = history.read(tmp_path, "metrics")
    assert df.groupby("device").size().to_dict() == {"host-a": 20, "host-b": 20}


def test_the_documented_example_config_is_valid():
    cfg = load_config(Path(__file__).parents[3] / "docs" / "farm.example.toml")
    assert len(cfg.devices) == 4 and cfg.variants == ("baseline", "optimized")
    assert cfg.devices[2].device_arg() == "s23-ultra@10.0.0.21:5555"
