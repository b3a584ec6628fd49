"""A simulated farm on this machine: several host workers in parallel over four nights, on the tiny model.

Faults are planted in the deploy subprocesses by tests/host/farm/plant/sitecustomize.py: a real slowdown
of every UNet invocation (measured by the runner's own clock) or a real crash (SIGABRT) of the runner process,
per worker.
Nights 1-3: w3 is slow. Night 4: w2 is slow (a regression), w3 is not (an improvement), w4's runner crashes,
w5, a phone behind a remote adb endpoint nobody serves, cannot be reached, and w6's deploy process crashes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from host.farm import history
from host.farm.__main__ import main as farm_main
from tests.browser import rendered_dom

PLANT = Path(__file__).parent / "plant"
REPO = Path(__file__).resolve().parents[3]
NIGHTS = ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04")
SLOW_MS = 200  # per UNet call: a tiny step is ~5 ms, so the planted change is ~40x

CONFIG = """
[farm]
model = "tiny"
variants = ["baseline"]
steps = 2
size = 64
repeats = 3
block_steps = 1
artifacts = "{artifacts}"
out = "out"
history = "out/history"
timeout_s = 300
retries = 1
backoff_s = 0.2

{devices}

# Tiny timings are milliseconds and share two cores with the other workers (medians move 2-3x under
# load): only a move of 5x or more counts here.
[thresholds]
window = 7
min_nights = 3
rel = 4.0
[thresholds.metrics]
load_s = 5.0
text_encoder_s = 5.0
vae_decoder_s = 5.0
"""
HOSTS = "\n".join(f'[[devices]]\nname = "w{i}"\nprofile = "host"\n' for i in (1, 2, 3, 4))
PHONE = '[[devices]]\nname = "w5"\nprofile = "s23"\nendpoint = "127.0.0.1:9"\n'
W6 = '[[devices]]\nname = "w6"\nprofile = "host"\n'


def write_config(folder: Path, artifacts: Path, devices: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "farm.toml"
    cfg.write_text(CONFIG.format(artifacts=artifacts, devices=devices))
    return cfg


@pytest.fixture(scope="module")
def farm(tmp_path_factory, tiny_builds, artifact_root):
    tiny_builds.get("baseline")  # the shared session build (the farm finds it in the store)
    root = tmp_path_factory.mktemp("farm")
    cfg = write_config(root, artifact_root, HOSTS)
    codes = {}
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", os.pathsep.join([str(PLANT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    mp.setenv("ANDROID_ADB_SERVER_PORT", "9")  # nothing listens there: no real adb server is ever used
    try:
        for night in NIGHTS[:3]:
            mp.setenv("SDPHONE_TEST_PLANT", f"w3=slow:{SLOW_MS}")
            codes[night] = farm_main(["run", "--config", str(cfg), "--night", night, "--no-dashboard"])
        cfg.write_text(cfg.read_text() + "\n" + PHONE + "\n" + W6)
        mp.setenv("SDPHONE_TEST_PLANT", f"w2=slow:{SLOW_MS},w4=crash,w6=deploy-crash")
        junit, js = root / "ci" / "junit.xml", root / "ci" / "verdict.json"
        codes[NIGHTS[3]] = farm_main(["run", "--config", str(cfg), "--night", NIGHTS[3], "--junit", str(junit),
                                      "--json", str(js)])
    finally:
        mp.undo()
    return {"root": root, "config": cfg, "codes": codes, "history": root / "out" / "history",
            "junit": junit, "json": js, "artifacts": artifact_root}


def test_baseline_nights_pass(farm):
    assert [farm["codes"][n] for n in NIGHTS[:3]] == [0, 0, 0]
    nights = history.read(farm["history"], "nights")
    assert list(nights.sort_values("night")["verdict"]) == ["ok", "ok", "ok", "regressed"]


def test_planted_regression_is_caught_and_improvement_is_not_flagged(farm):
    assert farm["codes"][NIGHTS[3]] == 1
    doc = json.loads(farm["json"].read_text())
    assert doc["verdict"] == "regressed" and doc["night"] == NIGHTS[3]
    regressed = {(r["device"], r["metric"]) for r in doc["regressions"]}
    assert {("w2", "unet_step_s"), ("w2", "end_to_end_s")} <= regressed
    assert {d for d, _ in regressed} == {"w2"}, regressed
    rows = {(r["device"], r["metric"]): r for r in doc["verdicts"] if r["layer"] is None}
    assert rows[("w3", "unet_step_s")]["status"] == "improved"
    assert rows[("w3", "unet_step_s")]["change"] < -0.8
    assert rows[("w2", "unet_step_s")]["change"] > 4.0 and rows[("w2", "unet_step_s")]["p_value"] < 0.05
    assert rows[("w1", "psnr_db")]["status"] == "unchanged"  # same image as the host reference


def test_planted_crash_and_unreachable_phone_stay_isolated(farm):
    doc = json.loads(farm["json"].read_text())
    failed = {r["device"]: r["detail"] for r in doc["failures"]}
    assert set(failed) == {"w4", "w5", "w6"}
    assert "SIGABRT" in failed["w4"] and "DeviceNotFound" in failed["w5"] and "SIGABRT" in failed["w6"]
    att = history.read(farm["history"], "attempts")
    tonight = att[att["run_id"] == doc["run_id"]]
    per_device = tonight.groupby("device")["outcome"].apply(list).to_dict()
    # the runner is the deploy's child process on the host device, as the app is on a phone: its abort is an
    # AppCrashed error of the deploy (transient: retried once, then given up), the deploy itself survives
    assert per_device["w4"] == ["error", "error"]
    assert set(tonight[tonight["device"] == "w4"]["error_type"]) == {"AppCrashed"}
    assert per_device["w6"] == ["crashed", "crashed"]            # the deploy process died: retried, given up
    assert per_device["w5"] == ["error", "error"]
    assert per_device["w1"] == per_device["w2"] == per_device["w3"] == ["ok"]
    metrics = history.read(farm["history"], "metrics")
    assert set(metrics[metrics["run_id"] == doc["run_id"]]["device"]) == {"w1", "w2", "w3"}


def test_junit_and_terminal_outputs(farm):
    root = ET.parse(farm["junit"]).getroot()
    assert int(root.get("failures")) >= 2 and root.get("errors") == "3"
    failing = {tc.get("classname") for tc in root.iter("testcase") if tc.find("failure") is not None}
    assert failing == {"farm.w2.baseline"}
    run_dir = farm["root"] / "out" / NIGHTS[3] / "_farm"
    (summary,) = run_dir.glob("*/summary.txt")
    text = summary.read_text()
    assert text.startswith(f"farm verdict, night {NIGHTS[3]}") and "REGRESSED" in text and "FAILED" in text


def test_history_is_queryable_with_pandas(farm):
    df = pd.read_parquet(farm["history"] / "metrics")
    assert {"night", "device", "variant", "metric", "value", "run_id"} <= set(df.columns)
    assert sorted(set(df["night"].astype(str))) == list(NIGHTS)
    typed = history.read(farm["history"], "metrics")
    assert len(typed) == len(df) and typed["repeat"].dtype == "Int64"
    steps = typed[(typed["metric"] == "unet_step_s") & (typed["device"] == "w1")]
    assert steps.groupby("night").size().tolist() == [3, 3, 3, 3]  # three repeats a night
    blocks = typed[typed["metric"] == "layer_s"]
    assert {"conv_in", "mid_block", "conv_out"} <= set(blocks["layer"])


def test_dashboard_renders_in_chromium(farm, tmp_path):
    out = tmp_path / "dash.html"
    assert farm_main(["report", "--config", str(farm["config"]), "--out", str(out)]) == 0
    html = out.read_text()
    assert "http://" not in html and "https://" not in html
    for sid in ("verdict", "trends", "layers", "nights"):
        assert f"<section id='{sid}'" in html
    dom, _ = rendered_dom(out, tmp_path / "profile")
    assert 'data-sections="4"' in dom
    assert dom.count("<svg") >= 4 and "w2 / baseline" in dom and "mid_block" in dom
    links = [l for l in dom.split('href="')[1:] if "report.html" in l.split('"')[0]]
    assert links, "no links to the nights' run reports"
    target = (out.parent / links[0].split('"')[0]).resolve()
    assert target.is_file()
    # The dashboard the run itself left next to the run folders.
    assert (farm["root"] / "out" / "dashboard.html").is_file()


def test_history_survives_a_run_killed_mid_write(farm, tmp_path):
    """SIGKILL the whole farm (orchestrator and workers) as soon as it starts writing tonight's results: the
    store stays readable, earlier nights are intact, the killed run has no finished-night row, and the next
    run over the same store works."""
    import shutil

    hist = tmp_path / "out" / "history"
    shutil.copytree(farm["history"], hist)
    before = history.read(hist, "metrics")
    cfg = write_config(tmp_path, farm["artifacts"], HOSTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLANT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "host.farm", "run", "--config", str(cfg), "--night", "2026-11-05",
                             "--no-dashboard"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    night_dir = hist / "metrics" / "night=2026-11-05"
    while time.monotonic() < deadline and proc.poll() is None:
        if night_dir.is_dir() and any(night_dir.rglob("*.parquet")):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    after = history.read(hist, "metrics")
    old = after[after["night"] < "2026-11-05"]
    pd.testing.assert_frame_equal(old.sort_values(list(old.columns)).reset_index(drop=True),
                                  before.sort_values(list(before.columns)).reset_index(drop=True))
    nights = history.read(hist, "nights")
    assert "2026-11-05" not in set(nights["night"])
    partial = after[after["night"] == "2026-11-05"]
    assert partial["value"].notna().all()  # whatever landed is whole rows
    # Leftovers of an interrupted write are hidden files, which readers skip.
    (night_dir / "device=w1" / "variant=baseline").mkdir(parents=True, exist_ok=True)
    (night_dir / "device=w1" / "variant=baseline" / ".part-torn.parquet.tmp").write_bytes(b"PAR1 torn")
    assert len(history.read(hist, "metrics")) == len(after)
    assert farm_main(["run", "--config", str(cfg), "--night", "2026-11-05", "--no-dashboard"]) in (0, 1)
    assert "2026-11-05" in set(history.read(hist, "nights")["night"])


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def test_a_stopped_farm_takes_its_deploy_processes_with_it(farm, tmp_path):
    """SIGTERM (cron's or CI's timeout) stops the farm: its deploy subprocesses, in sessions of their own, are
    killed too, and no retry starts."""
    cfg = write_config(tmp_path, farm["artifacts"], HOSTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLANT), os.environ.get("PYTHONPATH", "")]),
           "SDPHONE_TEST_PLANT": ",".join(f"w{i}=slow:2000" for i in (1, 2, 3, 4))}  # every step takes 2 s
    proc = subprocess.Popen([sys.executable, "-m", "host.farm", "run", "--config", str(cfg), "--night", "2026-11-06",
                             "--no-dashboard"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    out = str(tmp_path / "out" / "2026-11-06")
    while time.monotonic() < deadline and len(_processes_mentioning(out)) < 4:
        time.sleep(0.1)
    assert len(_processes_mentioning(out)) >= 4, "the workers did not start"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    time.sleep(0.5)
    assert _processes_mentioning(out) == []
