"""One farm night: build once, fan out one worker per device, record every attempt, judge, report.

Each attempt is one ``python -m host.deploy`` subprocess (one variant on one device, the runner's
repeats inside it), so a device that hangs, crashes or disappears takes down nothing but its own
attempt. Workers are threads that start those subprocesses, one per device, all in parallel; an
attempt that fails transiently (disconnect, app crash or low-memory kill, timeout, a device not found
yet, a subprocess that died) is retried after ``backoff_s * 2**(n-1)`` seconds, up to ``retries`` times.
Results go to the history as soon as an attempt ends.

Folders: ``<out>/<night>/<device>/`` holds that device's deploy sessions (each with its report.html) and
the attempt logs; ``<out>/<night>/_farm/<run_id>/`` the verdict (verdict.json, junit.xml, summary.txt);
``<out>/references/<key>/`` the host reference images, reused while the build and request are unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from host.errors import HarnessError
from host.farm import history
from host.farm.config import FarmConfig, FarmDevice

NIGHT_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
REPO = Path(__file__).resolve().parents[2]
EXIT_OK, EXIT_REGRESSED, EXIT_ERROR, EXIT_INCOMPLETE = 0, 1, 2, 3
#: seconds a deploy subprocess gets beyond the attempt timeout (its own, enforced on phones) before it is killed
KILL_GRACE_S = 60.0


class FarmError(HarnessError):
    pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


@dataclass
class Attempt:
    variant: str
    attempt: int
    outcome: str                  # ok | error | crashed | timeout | internal
    started_at: str
    duration_s: float
    error_type: str | None = None
    message: str | None = None
    session: str | None = None
    transient: bool = False


@dataclass
class Night:
    cfg: FarmConfig
    night: str
    run_id: str
    python: str = sys.executable
    log: Callable[[str], None] = print
    references: dict[str, Path] = field(default_factory=dict)     # variant -> reference run folder
    build_keys: dict[str, str] = field(default_factory=dict)
    live: set = field(default_factory=set)   # deploy subprocesses running now (killed with the farm)
    stopping: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def kill_children(self) -> None:
        self.stopping = True  # no new attempts, no retries
        with self._lock:
            procs = list(self.live)
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    @property
    def night_dir(self) -> Path:
        return self.cfg.out / self.night

    def say(self, msg: str) -> None:
        with self._lock:
            self.log(msg)

    # ------------------------------------------------------------------------------------------ steps

    def build(self) -> None:
        """Build (or find in the artifact store) every variant once, before any worker starts."""
        from host.build.cli import build_parser, run_builds

        for variant in self.cfg.variants:
            argv = ["--model", self.cfg.model, "--variant", variant, "--image-size", str(self.cfg.size)]
            argv += ["--profile-blocks"] if self.cfg.profile_blocks else []
            argv += ["--checkpoint", self.cfg.checkpoint] if self.cfg.checkpoint else []
            argv += ["--artifacts", self.cfg.artifacts] if self.cfg.artifacts else []
            args = build_parser().parse_args(argv)
            (manifest, build_dir, cached), = run_builds(args, log=lambda s: self.say(f"  build {s}"))
            self.build_keys[variant] = manifest["build_key"]
            self.say(f"build {variant}: {'cached' if cached else 'built'} {build_dir}")

    def deploy_argv(self, device_arg: str, variant: str, out: Path, result: Path, *, reference: bool = False) -> list[str]:
        c = self.cfg
        argv = [self.python, "-m", "host.deploy", "--device", device_arg, "--model", c.model, "--variant", variant,
                "--steps", str(c.steps), "--size", str(c.size), "--prompt", c.prompt,
                "--negative-prompt", c.negative_prompt, "--seed", str(c.seed), "--scheduler", c.scheduler,
                "--guidance", repr(c.guidance), "--timeout", repr(c.timeout_s), "--out", str(out),
                "--result-json", str(result)]
        if reference:
            argv += ["--repeats", "1", "--warmup", "0", "--no-profile-blocks"]
        else:
            argv += ["--repeats", str(c.repeats), "--warmup", str(c.warmup), "--block-steps", str(c.block_steps)]
            argv += [] if c.profile_blocks else ["--no-profile-blocks"]
        argv += ["--checkpoint", c.checkpoint] if c.checkpoint else []
        argv += ["--artifacts", c.artifacts] if c.artifacts else []
        return argv

    def reference_key(self, variant: str) -> str:
        c = self.cfg
        blob = json.dumps([self.build_keys.get(variant), c.prompt, c.negative_prompt, c.seed, c.steps, c.size,
                           c.scheduler, c.guidance], sort_keys=True)
        return f"{variant.lstrip('+')}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def make_references(self) -> None:
        """The host's image of every variant from the night's request: the fidelity reference."""
        for variant in self.cfg.variants:
            ref = self.cfg.out / "references" / self.reference_key(variant)
            if (ref / "image.png").is_file() or (ref / "image.f32").is_file():
                self.references[variant] = ref
                self.say(f"reference {variant}: {ref} (reused)")
                continue
            work = self.night_dir / "_reference"
            result = work / f".result-{variant.lstrip('+')}-{uuid.uuid4().hex[:6]}.json"
            a = self._spawn("reference", self.deploy_argv("host", variant, work, result, reference=True), variant, 1,
                            result, work / f"reference-{variant.lstrip('+')}.log")
            if a.outcome != "ok":
                self.say(f"reference {variant}: failed ({a.message}); no fidelity metric tonight")
                continue
            run_dir = Path(a.session) / variant
            tmp = ref.with_name(f".{ref.name}.{uuid.uuid4().hex[:6]}")
            tmp.mkdir(parents=True)
            for f in ("image.f32", "image.png", "request.json"):
                if (run_dir / f).is_file():
                    shutil.copy2(run_dir / f, tmp / f)
            try:
                os.replace(tmp, ref)
            except OSError:  # another host made it meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
            self.references[variant] = ref
            self.say(f"reference {variant}: {ref}")

    # ------------------------------------------------------------------------------------------ workers

    def worker(self, device: FarmDevice) -> list[Attempt]:
        """Every variant on one device, with retries; never raises."""
        attempts: list[Attempt] = []
        for variant in self.cfg.variants:
            for n in range(1, self.cfg.retries + 2):
                if self.stopping:
                    return attempts
                try:
                    a = self.attempt(device, variant, n)
                except Exception as e:  # noqa: BLE001 - a bug here must not stop the other workers
                    a = Attempt(variant, n, "internal", _now(), 0.0, type(e).__name__,
                                f"{e} | {traceback.format_exc(limit=3).splitlines()[-1]}")
                attempts.append(a)
                self.record_attempt(device, a)
                status = "ok" if a.outcome == "ok" else f"{a.outcome}: {a.error_type}: {a.message}"
                self.say(f"[{device.name}] {variant} attempt {n}: {status}")
                if a.outcome == "ok" or not a.transient or n > self.cfg.retries:
                    break
                delay = self.cfg.backoff_s * 2 ** (n - 1)
                self.say(f"[{device.name}] {variant}: retry in {delay:g} s")
                time.sleep(delay)
        return attempts

    def attempt(self, device: FarmDevice, variant: str, n: int) -> Attempt:
        folder = self.night_dir / device.name
        tag = f"{variant.lstrip('+')}-{self.run_id}-{n}"
        result = folder / f".result-{tag}.json"
        a = self._spawn(device.name, self.deploy_argv(device.device_arg(), variant, folder, result), variant, n,
                        result, folder / f"attempt-{tag}.log")
        if a.outcome == "ok":
            self.record_metrics(device, variant, Path(a.session))
        return a

    def _spawn(self, who: str, argv: list[str], variant: str, n: int, result: Path, log_path: Path) -> Attempt:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SDPHONE_FARM_DEVICE": who, "SDPHONE_FARM_RUN_ID": self.run_id,
               "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        started, t0 = _now(), time.monotonic()
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                    start_new_session=True)
            with self._lock:
                self.live.add(proc)
            if self.stopping:  # stopped while this one was starting
                _kill_group(proc)
            try:
                rc = proc.wait(timeout=self.cfg.timeout_s + KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return Attempt(variant, n, "timeout", started, time.monotonic() - t0, "RunTimeout",
                               f"no result after {self.cfg.timeout_s + KILL_GRACE_S:g} s; killed (log: {log_path})",
                               transient=True)
            except BaseException:
                _kill_group(proc)
                raise
            finally:
                with self._lock:
                    self.live.discard(proc)
        dur = time.monotonic() - t0
        outcome = _read_json(result)
        if rc == 0 and outcome.get("ok"):
            return Attempt(variant, n, "ok", started, dur, session=outcome["session"])
        if outcome.get("error"):
            e = outcome["error"]
            return Attempt(variant, n, "error", started, dur, e.get("type"), e.get("message"),
                           transient=bool(e.get("transient")))
        why = f"killed by signal {-rc} ({_signame(-rc)})" if rc < 0 else f"exit status {rc}"
        return Attempt(variant, n, "crashed", started, dur, "Crashed",
                       f"deploy process {why} | last log: {_tail(log_path)}", transient=True)

    # ------------------------------------------------------------------------------------------ history

    def record_attempt(self, device: FarmDevice, a: Attempt) -> None:
        history.append(self.cfg.history, "attempts", [{
            "night": self.night, "device": device.name, "run_id": self.run_id, "variant": a.variant,
            "attempt": a.attempt, "started_at": a.started_at, "duration_s": a.duration_s, "outcome": a.outcome,
            "error_type": a.error_type, "message": a.message, "session": a.session,
            "recorded_by": history.recorder()}])

    def record_metrics(self, device: FarmDevice, variant: str, session: Path) -> None:
        from host.farm.metrics import fidelity, run_metrics

        run_dir = session / variant
        rows = run_metrics(run_dir)
        ref = self.references.get(variant)
        if ref is not None:
            try:
                rows.extend(fidelity(run_dir, ref))
            except (OSError, ValueError) as e:
                self.say(f"[{device.name}] {variant}: no fidelity metric ({e})")
        build_key = self.build_keys.get(variant)
        common = {"night": self.night, "device": device.name, "variant": variant, "run_id": self.run_id,
                  "profile": device.profile, "target": device.serial or device.endpoint or None,
                  "model": self.cfg.model, "session": str(session), "build_key": build_key,
                  "recorded_at": _now(), "recorded_by": history.recorder()}
        history.append(self.cfg.history, "metrics", [{**common, **r} for r in rows])


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown"


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "(no log)"
    return " / ".join(l[:200] for l in lines[-n:]) or "(empty log)"


def _read_json(path: Path) -> dict:
    try:
        v = json.loads(path.read_text())
        return v if isinstance(v, dict) else {}
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------- the night


def run_night(cfg: FarmConfig, night: str | None = None, *, junit: Path | None = None, json_out: Path | None = None,
              dashboard: bool = True, log: Callable[[str], None] = print) -> int:
    from host.farm import outputs
    from host.farm.verdict import overall, verdicts

    night = night or datetime.now(timezone.utc).strftime("%Y-%m-%d")
    if not NIGHT_RE.fullmatch(night):
        raise FarmError(f"--night {night!r}: expected YYYY-MM-DD")
    history.ensure(cfg.history)
    n = Night(cfg, night, new_run_id(), log=log)
    started = _now()
    log(f"farm night {night}, run {n.run_id}: {len(cfg.devices)} device(s) x {len(cfg.variants)} variant(s) x "
        f"{cfg.repeats} repeat(s); history {cfg.history}")
    n.build()
    previous = {}

    def stop(signum, frame):  # a stopped farm takes its deploy subprocesses (own sessions) with it
        n.kill_children()
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if cfg.reference:
            n.make_references()
        with ThreadPoolExecutor(max_workers=len(cfg.devices), thread_name_prefix="farm") as pool:
            futures = {d.name: pool.submit(n.worker, d) for d in cfg.devices}
            attempts = {name: f.result() for name, f in futures.items()}
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    failed = [(dev, v, _last_error(a, v)) for dev, a in attempts.items() for v in cfg.variants
              if not any(x.variant == v and x.outcome == "ok" for x in a)]
    metrics = history.read(cfg.history, "metrics")
    table = verdicts(metrics, night, n.run_id, cfg.thresholds, failed)
    att = history.read(cfg.history, "attempts")
    att = att[att["run_id"] == n.run_id]
    verdict = overall(table, cfg.thresholds)
    doc = outputs.verdict_json(table, cfg.thresholds, night, n.run_id, att,
                               {"config": str(cfg.path), "started_at": started, "finished_at": _now()})
    out_dir = n.night_dir / "_farm" / n.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    text = outputs.terminal(table, cfg.thresholds, night, n.run_id)
    (out_dir / "summary.txt").write_text(text + "\n")
    (out_dir / "verdict.json").write_text(outputs.dumps(doc))
    xml = outputs.junit_xml(table, cfg.thresholds, night, n.run_id, att)
    (out_dir / "junit.xml").write_text(xml)
    for path, data in ((junit, xml), (json_out, outputs.dumps(doc))):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data)
    history.write_verdict(cfg.history, night, n.run_id, doc)
    history.append(cfg.history, "nights", [{
        "night": night, "run_id": n.run_id, "config": str(cfg.path), "started_at": started, "finished_at": _now(),
        "verdict": verdict, "devices": len(cfg.devices), "failed_devices": len({d for d, _, _ in failed}),
        "regressions": doc["counts"]["regressed"], "recorded_by": history.recorder()}])
    log(text)
    log(f"verdict: {out_dir / 'verdict.json'}  junit: {out_dir / 'junit.xml'}")
    if dashboard:
        from host.farm.dashboard import render_dashboard

        path = render_dashboard(cfg.history, cfg.out / "dashboard.html")
        log(f"dashboard: {path}")
    return {"ok": EXIT_OK, "regressed": EXIT_REGRESSED, "incomplete": EXIT_INCOMPLETE}[verdict]


def _last_error(attempts: list[Attempt], variant: str) -> str:
    mine = [a for a in attempts if a.variant == variant]
    if not mine:
        return "not attempted"
    a = mine[-1]
    return f"{len(mine)} attempt(s); last: {a.outcome}: {a.error_type}: {a.message}"
