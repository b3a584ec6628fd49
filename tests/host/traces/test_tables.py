"""Trace records -> fixed-schema tables, run folders, save/load."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from host.traces import tables
from tests.host.traces.fake_runs import make_run


def _assert_schema(df: pd.DataFrame, schema: dict) -> None:
    assert list(df.columns) == list(schema)
    for col, dtype in schema.items():
        assert str(df[col].dtype) == str(pd.Series([], dtype=dtype).dtype), (col, df[col].dtype, dtype)


@pytest.mark.parametrize("kind", list(tables.SCHEMAS))
def test_empty_inputs_give_empty_typed_frames(kind):
    t = tables.tables_from_records([])
    _assert_schema(tables.empty(kind), tables.SCHEMAS[kind])
    _assert_schema(t[kind], tables.SCHEMAS[kind])
    assert len(t[kind]) == (1 if kind == "meta" else 0)


def test_run_folder_tables(tmp_path):
    d = make_run(tmp_path, "baseline", steps=3, warmup=1, repeats=2, truncated_tail=True)
    run = tables.load_run(d)
    assert run.run_id == "20261121T233000Z_baseline" and run.variant == "baseline" and run.device == "host-cpu"
    assert run.ok
    for kind, schema in tables.SCHEMAS.items():
        _assert_schema(run.tables[kind], schema)
    sp = run.spans
    assert (sp["dur_s"] >= 0).all()
    steps = sp[(sp["name"] == "unet_step") & ~sp["warmup"]]
    assert len(steps) == 3 * 2 and sorted(steps["step"].unique().tolist()) == [0, 1, 2]
    assert sp[sp["warmup"]]["repeat"].unique().tolist() == [0]
    blocks = sp[sp["cat"] == "block"]
    assert (blocks["block"] == blocks["name"]).all()
    ops = sp[sp["cat"] == "op"]
    assert ops["op_type"].notna().all() and ops["op_index"].notna().all()
    assert sp.loc[sp["cat"] == "load", "component"].notna().all()
    assert sp.loc[sp["cat"] == "total", "component"].isna().all()
    mem = run.memory
    assert len(mem) > 0 and (mem["rss_bytes"] > 0).all() and (mem["source"] == "proc_status").all()
    meta = run.meta.iloc[0]
    assert meta["state"] == "ok" and meta["steps"] == 3 and meta["runner"] == "python-host"
    assert meta["n_spans"] == len(sp)  # the truncated last line was skipped


def test_missing_status_and_manifest_reference(tmp_path):
    manifest = {"model": "tiny", "variant": {"name": "optimized", "quantization": "fp16"}, "build_key": "k",
                "components": {"unet": {"file": "unet.tflite", "size_bytes": 1000},
                               "vae_decoder": {"file": "vae_decoder.tflite", "size_bytes": 24}}}
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "manifest.json").write_text(json.dumps(manifest))
    d = make_run(tmp_path, "x", status=None, run_id="r1", manifest=str(tmp_path / "build" / "manifest.json"))
    run = tables.load_run(d)
    assert run.manifest["build_key"] == "k" and run.variant == "optimized-fp16"  # labelled as deploy names it
    meta = run.meta.iloc[0]
    assert meta["state"] == "missing" and meta["model_bytes"] == 1024 and meta["quantization"] == "fp16"
    assert not run.ok


def test_variant_from_run_id():
    assert tables.variant_name("20261121T233000Z_optimized") == "optimized"
    assert tables.variant_name("20261121T233000Z_+flash") == "+flash"
    assert tables.variant_name("x", request={"variant": "+softmax"}) == "+softmax"
    assert tables.variant_name(None) == "unknown"
    assert tables.variant_name("x", manifest={"variant": {"name": "+gn_gelu", "quantization": "int8"}}) == "+gn_gelu-int8"
    assert tables.variant_name("x", manifest={"variant": {"name": "cpu", "quantization": "fp32"}}) == "cpu"


def test_save_and_load_tables(tmp_path):
    runs = [tables.load_run(make_run(tmp_path / "runs", v, speed=s)) for v, s in (("baseline", 1), ("optimized", 2))]
    both = tables.concat_tables(r.tables for r in runs)
    assert both["meta"]["run_id"].nunique() == 2
    written = tables.save_tables(both, tmp_path / "tables")
    assert all(p.is_file() for paths in written.values() for p in paths)
    assert {p.suffix for paths in written.values() for p in paths} == {".parquet", ".csv"}
    back = tables.load_tables(tmp_path / "tables")
    for kind, schema in tables.SCHEMAS.items():
        _assert_schema(back[kind], schema)
        assert len(back[kind]) == len(both[kind])
    csv = pd.read_csv(tmp_path / "tables" / "spans.csv")
    assert list(csv.columns) == list(tables.SPANS_COLUMNS)


def test_deploy_folder_and_errors(tmp_path):
    make_run(tmp_path / "deploy", "baseline")
    make_run(tmp_path / "deploy" / "phone", "optimized")
    assert len(tables.find_run_dirs(tmp_path / "deploy")) == 2
    with pytest.raises(FileNotFoundError):
        tables.load_run(tmp_path / "nope")
    with pytest.raises(ValueError):
        tables.load_run(tmp_path)


def test_bad_line_mid_trace_is_skipped(tmp_path):
    d = make_run(tmp_path, "baseline")
    lines = (d / "trace.jsonl").read_text().splitlines()
    lines.insert(3, '{"type": "span", "na')
    (d / "trace.jsonl").write_text("\n".join(lines) + "\n")
    run = tables.load_run(d)
    assert len(run.records) == len(lines) - 1 and run.records[0]["type"] == "meta"


def test_parse_trace_lines_is_tolerant():
    recs = tables.parse_trace_lines(['{"type": "meta", "t": 0}', "", "[1, 2]", '{"type": "span", "t"'])
    assert recs == [{"type": "meta", "t": 0}]
