"""``python -m host.bench pipeline`` end to end on the tiny config: every system in its own subprocess.

The tiny builds come from the session's artifact store (shared with the other tests); the litert-torch
example's converted files are cached there too, so only the first session pays for its conversion.
"""
from __future__ import annotations

import json
import math
import statistics

import pytest

from host.bench import pipeline

TINY = ["--model", "tiny", "--size", "64", "--steps", "2", "--repeats", "1", "--threads", "2"]


def _finite_positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.fixture(scope="module")
def full_run(artifact_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-pipeline")
    json_path = out / "copy" / "results.json"
    rc = pipeline.main(TINY + ["--artifacts", str(artifact_root), "--out", str(out / "run"), "--json", str(json_path)])
    return rc, out / "run", json.loads(json_path.read_text())


def test_every_system_produces_finite_raw_samples(full_run, capsys):
    rc, out, report = full_run
    assert rc == 0, {s: r["error"] for s, r in report["systems"].items()}
    assert report["schema"] == "sdphone.bench.pipeline"
    assert report["settings"]["systems"] == list(pipeline.SYSTEMS)
    assert (out / "pipeline.json").is_file() and (out / "summary.txt").is_file()
    for system in pipeline.SYSTEMS:
        rec = report["systems"][system]
        assert rec["status"] == "ok" and rec["error"] is None, rec
        run = rec["run"]
        s = run["samples"]
        # raw samples: one list of per-step times per measured repeat, one value per repeat for the rest
        assert len(s["unet_step"]) == 1 and len(s["unet_step"][0]) == 2
        assert all(_finite_positive(v) for v in s["unet_step"][0])
        for m in ("text_encoder", "vae_decoder", "generation"):
            assert len(s[m]) == 1 and _finite_positive(s[m][0]), (system, m, s[m])
        assert len(run["warmup_samples"]["generation"]) == 1  # the warmup generation is recorded apart
        assert s["generation"][0] >= sum(s["unet_step"][0])
        # model loads inside the generation: ours load each model for its stage (residency phase), the
        # reference systems before their timed loop
        assert len(s["model_loads"]) == 1
        if system in pipeline.OURS:
            assert 0 < s["model_loads"][0] < s["generation"][0] - sum(s["unet_step"][0])
            # the peak is the runner's alone: the trace tables' pandas is imported after the run
            assert run["info"]["pandas_imported"] is False and run["info"]["torch_imported"] is False
        else:
            assert s["model_loads"][0] == 0.0
        if system == "litert-example":  # its loads before the timed loop, timed all the same
            setup = run["setup_load_seconds"]
            assert set(setup) == set(pipeline.LITERT_EXAMPLE_FILES) and all(_finite_positive(v) for v in setup.values())
            assert rec["stats"]["setup_loads"]["seconds"] == pytest.approx(sum(setup.values()))
        else:
            assert rec["stats"]["setup_loads"] is None
        assert rec["stats"]["generation_resident"]["median"] == pytest.approx(s["generation"][0] - s["model_loads"][0])
        assert _finite_positive(run["peak_rss_bytes"])
        st = rec["stats"]
        for m in pipeline.METRICS:
            assert st[m]["min"] <= st[m]["median"] <= st[m]["max"]
        assert (out / system / "run.log").is_file()


def test_ratios_and_cross_checks(full_run):
    _, out, report = full_run
    vs_base = report["ratios"]["vs_ours_baseline"]
    assert set(vs_base) == set(pipeline.SYSTEMS)
    assert all(v == pytest.approx(1.0) for v in vs_base["ours-baseline"].values())
    for system, row in vs_base.items():
        assert set(row) == set(pipeline.METRICS) | {"peak_rss"}
        assert all(_finite_positive(v) for v in row.values()), (system, row)
    speed = report["ratios"]["ours_optimized_speedup"]
    assert set(speed) == set(pipeline.SYSTEMS) - {"ours-optimized"}
    gen = {s: report["systems"][s]["stats"]["generation"]["median"] for s in pipeline.SYSTEMS}
    assert speed["torch-eager"]["generation"] == pytest.approx(gen["torch-eager"] / gen["ours-optimized"])

    # Same weights and inputs: torch-eager (diffusers) and ours-optimized reproduce ours-baseline's image.
    checks = report["image_check"]
    assert checks["torch-eager"]["rel_l2_vs_ours_baseline"] < 1e-3
    assert checks["ours-optimized"]["rel_l2_vs_ours_baseline"] < 1e-3
    # int8 weights change the image, measurably but not into noise.
    assert 15.0 < checks["ours-int8"]["psnr_db_vs_ours_baseline"] < checks["ours-optimized"]["psnr_db_vs_ours_baseline"]
    assert report["systems"]["ours-int8"]["prepare"]["info"]["quantization"] == "int8"
    variants = {s: report["systems"][s]["prepare"]["info"]["variant"] for s in pipeline.OURS}
    assert variants == {"ours-baseline": "baseline", "ours-optimized": "cpu",  # the host profile's optimized set
                        "ours-paper": "optimized", "ours-int8": "+gn_gelu"}
    assert checks["ours-paper"]["rel_l2_vs_ours_baseline"] < 1e-3

    torch_info = report["systems"]["torch-eager"]["run"]["info"]["fp32"]
    assert torch_info["autocast_cpu_enabled"] is False and torch_info["float32_matmul_precision"] == "highest"
    lit = report["systems"]["litert-example"]
    assert lit["run"]["info"]["torch_imported"] is False  # its peak RSS is LiteRT's, not the converter's
    meta = lit["prepare"]["info"]["meta"]
    assert all(c["tflite_vs_torch_rel_err"] < 1e-3 for c in meta["components"].values())
    assert meta["components"]["unet"]["inputs"]["args_2"][0] == [1, meta["dims"]["t_emb_dim"]]

    floor = report["flop_floor"]
    assert floor and floor["ours-baseline"]["flops"] > 0 and floor["ours-baseline"]["floor_s"] > 0
    # over the GEMM rate measured in this run, before the systems and after the paired calls (the higher)
    rates = [report["gemm_peak"][k]["flops_per_s"] for k in ("before", "after")]
    assert all(_finite_positive(r) for r in rates)
    assert floor["ours-baseline"]["peak_flops"] == max(rates)
    assert floor["ours-baseline"]["floor_s"] == pytest.approx(floor["ours-baseline"]["flops"] / max(rates))
    # the direct-convolution floor leaves out attention's batched products; the as-executed one counts every op
    assert floor["ours-baseline"]["flops"] < floor["ours-baseline"]["all_flops"]
    assert floor["ours-optimized"]["flops"] == floor["ours-optimized"]["all_flops"]
    # and again over XNNPACK's own fp32 GEMM rate, measured in this run through the same runtime
    xrates = [report["xnnpack_gemm"][k]["flops_per_s"] for k in ("before", "after")]
    assert all(_finite_positive(r) for r in xrates)
    for s in ("ours-baseline", "ours-optimized"):
        assert floor[s]["xnnpack_peak_flops"] == max(xrates)
        assert floor[s]["xnnpack_floor_s"] == pytest.approx(floor[s]["flops"] / max(xrates))
    assert report["xnnpack_gemm"]["before"]["shape"] in [x[:3] for x in report["xnnpack_gemm"]["before"]["shapes"]]

    text = (out / "summary.txt").read_text()
    for system in pipeline.SYSTEMS:
        assert system in text
    assert "ratio to ours-baseline" in text and "speedup" in text and "FLOP floor" in text
    assert "fp32 GEMM measured in this run" in text
    assert "at XNNPACK's own fp32 GEMM rate" in text and "of the fp32 GEMM peak above" in text

    # Issue 6's goals, each a ratio of two medians of this run.
    goals = {t["key"]: t for t in report["targets"]}
    assert set(goals) == {k for k, _, _ in pipeline.TARGETS}
    step = {s: report["systems"][s]["stats"]["unet_step"]["median"] for s in pipeline.SYSTEMS}
    t = goals["int8_step_vs_example"]
    assert t["ratio"] == pytest.approx(step["ours-int8"] / step["litert-example"]) and t["goal"] == 0.35
    assert t["met"] == (t["ratio"] <= 0.35) and t["margin"] == pytest.approx(t["ratio"] / 0.35 - 1)
    files = sum(report["systems"]["ours-baseline"]["prepare"]["info"]["size_bytes"].values())
    assert goals["baseline_rss_vs_files"]["reference"] == files
    assert "targets (issue 6" in text and "UNet step: ours-int8 / litert-example" in text
    gen_res = {s: report["systems"][s]["stats"]["generation_resident"]["median"] for s in pipeline.SYSTEMS}
    assert goals["optimized_generation_vs_example"]["ratio"] == pytest.approx(
        gen_res["ours-optimized"] / gen_res["litert-example"])
    assert goals["optimized_generation_loads_vs_example"]["ratio"] == pytest.approx(
        gen["ours-optimized"] / gen["litert-example"])
    assert "gen. less loads" in text
    lit_setup = report["systems"]["litert-example"]["stats"]["setup_loads"]["seconds"]
    assert goals["optimized_generation_each_loads_vs_example"]["ratio"] == pytest.approx(
        gen["ours-optimized"] / (gen["litert-example"] + lit_setup))
    assert f"litert-example: its models opened in {lit_setup:.2f} s before the timed loop" in text
    assert "generation with each side's model loads: ours-optimized / litert-example" in text

    # The step goal again on paired calls: both UNets in one process, alternating.
    pr = report["paired_step"]
    assert pr["status"] == "ok", pr
    a, b = pr["run"]["samples"]["ours-optimized"], pr["run"]["samples"]["litert-example"]
    assert len(a) == len(b) == report["settings"]["paired"] == 4
    assert all(_finite_positive(v) for v in a + b + list(pr["run"]["first_call"].values()))
    assert pr["stats"]["ratio"]["median"] == pytest.approx(statistics.median(x / y for x, y in zip(a, b)))
    assert pr["files"]["ours-optimized"] == report["systems"]["ours-optimized"]["prepare"]["info"]["build_dir"] + "/unet.tflite"
    assert pr["files"]["litert-example"].endswith("/diffusion.tflite")
    t = goals["optimized_step_vs_example_paired"]
    assert t["ratio"] == pytest.approx(pr["stats"]["ratio"]["median"]) and t["goal"] == 0.6
    assert t["value"] == pr["stats"]["ours-optimized"]["median"]
    assert t["reference"] == pr["stats"]["litert-example"]["median"]
    assert "UNet call, paired (4 alternating pairs in one process" in text
    assert "UNet call, paired: ours-optimized / litert-example" in text


def test_a_failing_system_is_reported_and_the_others_still_run(full_run, artifact_root, tmp_path, monkeypatch, capsys):
    _, _, first = full_run
    monkeypatch.setenv(pipeline.FAIL_ENV, "torch-eager")
    rc = pipeline.main(TINY + ["--systems", "torch-eager,litert-example", "--artifacts", str(artifact_root),
                               "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 1
    report = json.loads((tmp_path / "pipeline.json").read_text())
    failed = report["systems"]["torch-eager"]
    assert failed["status"] == "failed" and "forced failure" in failed["error"] and "\n" not in failed["error"]
    assert failed["run"]["ok"] is False and failed["prepare"]["ok"] is True
    assert "torch-eager     FAILED: run: torch-eager: forced failure" in printed
    # the next system still ran, and found the example's conversion in the artifact store
    lit = report["systems"]["litert-example"]
    assert lit["status"] == "ok" and lit["prepare"]["info"]["cached"] is True
    folder = lit["prepare"]["info"]["folder"]
    assert folder == first["systems"]["litert-example"]["prepare"]["info"]["folder"]
    assert folder.startswith(str(artifact_root / "litert-example" / "tiny" / ""))
    assert report["ratios"] == {}  # neither ours-baseline nor ours-optimized ran
    assert report["paired_step"] is None  # nothing to pair the example with


def test_a_failing_paired_phase_is_reported_and_fails_the_run(full_run, artifact_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(pipeline.FAIL_ENV, "paired")
    rc = pipeline.main(TINY + ["--systems", "ours-optimized,litert-example", "--warmup", "0", "--paired", "2",
                               "--artifacts", str(artifact_root), "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 1
    report = json.loads((tmp_path / "pipeline.json").read_text())
    assert all(r["status"] == "ok" for r in report["systems"].values())  # what the systems measured is kept
    pr = report["paired_step"]
    assert pr["status"] == "failed" and "paired: forced failure" in pr["error"] and "\n" not in pr["error"]
    assert "UNet call, paired: FAILED: run: paired: forced failure" in printed
    goals = {t["key"] for t in report["targets"]}
    assert "optimized_step_vs_example" in goals and "optimized_step_vs_example_paired" not in goals


def test_bad_arguments_are_rejected_before_anything_runs(tmp_path, capsys):
    assert pipeline.main(["--systems", "ours-baseline,nonsense", "--out", str(tmp_path / "x")]) == 2
    assert "unknown system 'nonsense'" in capsys.readouterr().err
    assert pipeline.main(["--size", "100", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_the_report_shows_the_benchmark_side_by_side(full_run, tmp_path):
    from tests.browser import rendered_dom

    _, out, report = full_run
    html = (out / "report.html").read_text()
    assert "<section id='bench'" in html and "<section id='layers'" in html
    for system in pipeline.SYSTEMS:
        assert f"<td>{system}</td>" in html
    assert "<h3>Targets</h3>" in html and "peak RSS: ours-int8 / its model files" in html
    assert "at XNNPACK's own fp32 GEMM rate measured in this run" in html  # the floor over the kernels' rate
    dom, _ = rendered_dom(out / "report.html", tmp_path / "profile")
    assert 'href="#bench"' in dom
    # Systems other than ours ran each model once before timing (ours: the runner's first_invoke phase).
    for system in ("litert-example", "torch-eager"):
        assert _finite_positive(report["systems"][system]["run"]["warmup_samples"]["first_invoke"][0])


def test_deploy_picks_the_latest_matching_benchmark(full_run, tmp_path):
    _, out, _ = full_run
    from host.deploy import link_latest

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "b1").symlink_to(out)
    link_latest(tmp_path / "bench", tmp_path / "bench" / "b1")
    assert pipeline.latest_bench(tmp_path, "tiny", 64, 2) == tmp_path / "bench" / "latest" / "pipeline.json"
    assert pipeline.latest_bench(tmp_path, "tiny", 64, 20) is None
    assert pipeline.latest_bench(tmp_path, "sd14", 64, 2) is None
    assert pipeline.latest_bench(tmp_path / "nothing", "tiny", 64, 2) is None


def test_a_failed_xnnpack_rate_is_said_and_the_other_one_used():
    results = {"ours-baseline": {"status": "ok", "stats": {"unet_step": {"median": 2.0}}},
               "ours-optimized": {"status": "ok", "stats": {"unet_step": {"median": 1.8}}}}
    xnn = {"before": {"flops_per_s": 2e11, "shape": [8, 4, 4]}, "after": {"error": "RuntimeError: boom"}}
    report = {"xnnpack_gemm": xnn, "gemm_peak": {"before": {"flops_per_s": 4e11}},
              "flop_floor": {"ours-baseline": {"label": "direct convolution (x)", "flops": 3e11,
                                               "xnnpack_peak_flops": pipeline._best_rate(xnn),
                                               "xnnpack_floor_s": 3e11 / pipeline._best_rate(xnn)}}}
    text = "\n".join(pipeline._xnnpack_floor_lines(report, results))
    assert "before 200 (8x4x4), after failed (RuntimeError: boom)" in text
    assert ("direct convolution: 300 GFLOP / 200 GFLOP/s = 1500 ms; ours-baseline step / this floor 1.333; "
            "ours-optimized step / this floor 1.200 (the floor target's ratio at this rate)") in text
    assert "XNNPACK's rate is 50% of the fp32 GEMM peak above" in text
    assert pipeline._xnnpack_floor_lines({}, results) == []
