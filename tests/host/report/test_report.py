"""The self-contained HTML report, its CLI, and a real browser rendering it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from host.report import ReportError, render_report, terminal_summary
from host.report.__main__ import main
from tests.browser import rendered_dom
from tests.host.traces.fake_runs import make_run

SECTION_IDS = ("summary", "ladder", "layers", "timeline", "memory", "images", "roofline", "runs")


@pytest.fixture(scope="module")
def deploy(tmp_path_factory, tiny_builds):
    """A deploy folder with a baseline and an optimized run, each with the tiny UNet as its model."""
    _, build_dir = tiny_builds.get("baseline")
    root = tmp_path_factory.mktemp("deploy")
    for variant, kw in (("baseline", {}), ("optimized", {"speed": 2.0, "noise": 0.01})):
        d = make_run(root, variant, **kw)
        (d / "models").mkdir()
        try:
            os.link(build_dir / "unet.tflite", d / "models" / "unet.tflite")
        except OSError:
            shutil.copyfile(build_dir / "unet.tflite", d / "models" / "unet.tflite")
    return root


def test_render_report(deploy, tmp_path):
    out = render_report(deploy, tmp_path / "r.html", peak_flops=1e11, mem_bandwidth=2e10)
    html = out.read_text()
    for sid in SECTION_IDS:
        assert f"<section id='{sid}'" in html
    assert not re.search(r"""(src|href)\s*=\s*['"](https?:)?//""", html)  # nothing external
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") == 2
    assert "2.00×" in html                       # the optimized run's speedup
    assert "46.02 dB" in html                    # PSNR of a 0.01 offset
    assert "measured vs roofline floor" in html  # floors joined with the measured blocks
    assert "down_blocks.0" in html and "<svg" in html


def test_roofline_from_matched_profile(deploy, tmp_path):
    try:
        from host.profiles import load_profile

        load_profile("host")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no host device profile: {e}")
    html = render_report(deploy, tmp_path / "auto.html").read_text()
    assert "matched profile host" in html and "× the floor" in html
    html = render_report(deploy, tmp_path / "none.html", auto_profile=False).read_text()
    assert "measured vs roofline floor" not in html and "FLOPs" in html


def test_default_output_and_errors(deploy, tmp_path):
    run_dir = next(p for p in deploy.iterdir() if p.name.endswith("_baseline"))
    out = render_report(run_dir, analyze_graphs=False)
    assert out == run_dir / "report.html" and out.is_file()
    with pytest.raises(ReportError):
        render_report(tmp_path / "missing", tmp_path / "x.html")
    with pytest.raises(ReportError):
        render_report(tmp_path, tmp_path / "x.html")  # no run folders in it


def test_terminal_summary(deploy):
    text = terminal_summary(deploy)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["variant", "device"]
    assert lines[2].startswith("baseline") and lines[3].startswith("optimized")
    assert "2.00×" in lines[3] and "46.02 dB" in lines[3]
    assert "up_blocks.3" in text


def test_cli(deploy, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main([str(deploy), "--out", str(out), "--no-graph", "--tables", str(tmp_path / "t"), "--perfetto"]) == 0
    assert out.is_file() and (tmp_path / "t" / "spans.parquet").is_file()
    assert f"report: {out}" in capsys.readouterr().out
    assert all((d / "trace.perfetto.json").is_file() for d in deploy.iterdir() if d.is_dir())
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "no run folders" in capsys.readouterr().err


def test_report_renders_in_chromium(deploy, tmp_path):
    out = render_report(deploy, tmp_path / "browser.html", peak_flops=1e11, mem_bandwidth=2e10)
    dom, _ = rendered_dom(out, tmp_path / "profile")
    body = re.search(r"<body[^>]*>", dom)
    # The table of contents is built by the page's script: one link per section.
    toc = re.search(r'<nav id="toc">(.*?)</nav>', dom, re.S).group(1)
    assert re.findall(r'href="#([a-z]+)"', toc) == list(SECTION_IDS)
    assert f'data-sections="{len(SECTION_IDS)}"' in body.group(0)
    assert dom.count("<svg") >= 4
