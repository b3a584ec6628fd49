"""``python -m host.deploy``: build (or reuse) variants, generate on a device through the run protocol,
and leave a run folder with images, trace tables, an HTML report and a terminal summary.

Layout of one invocation (metadata lives in the manifests and requests, not in these names):

  runs/<device>/<UTC timestamp>_<label>/          label: the variant, "ladder", or "a-vs-b"
      <variant>/                                  one protocol run folder per variant (request, trace, image)
      tables/                                     spans / memory / meta / ladder as parquet and CSV
      report.html  summary.txt  timeline.perfetto.json  deploy.json
  runs/<device>/latest -> the newest invocation
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from host.build.cli import REPO, add_build_arguments
from host.errors import HarnessError
from models.config import RUNGS, ConfigError

DEVICE_ENV = "SDPHONE_DEVICE"


class DeployError(HarnessError):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m host.deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=os.environ.get(DEVICE_ENV, "host"),
                   help=f"device profile name (or serial/UDID); default ${DEVICE_ENV} or 'host'")
    add_build_arguments(p, several_variants=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=512, help="image side in pixels, a multiple of 64 (default 512)")
    p.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", type=int, default=42, help="seed of the initial noise (generated on the host)")
    p.add_argument("--scheduler", default="dpmpp_2m", help="ddim, dpmpp_2m or euler (default dpmpp_2m)")
    p.add_argument("--karras", action="store_true", help="Karras sigmas (dpmpp_2m, euler)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the device profile's)")
    p.add_argument("--warmup", type=int, default=0, help="untimed generations before the measured ones")
    p.add_argument("--repeats", type=int, default=1, help="measured generations per variant")
    p.add_argument("--residency", choices=("all", "phase"), default="all",
                   help="all: the three models stay loaded for the whole run (default); phase: each is loaded "
                        "for its stage of every generation and released after it (peak memory: the largest model)")
    p.add_argument("--no-profile-blocks", dest="profile_blocks", action="store_false",
                   help="skip the per-block profile build and pass")
    p.add_argument("--block-steps", type=int, default=2, help="steps at which the block chain is timed (0: all)")
    p.add_argument("--no-block-reference", dest="block_reference", action="store_false",
                   help="do not time the whole UNet beside the block chain (timing it holds the UNet and the block "
                        "models together); the chain's sum is then compared with the generation's steps")
    p.add_argument("--per-op", action="store_true", help="also profile every op once per component (LiteRT profiler)")
    p.add_argument("--memory-interval-ms", type=int, default=50)
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds a run may take before it is stopped (default $SDPHONE_RUN_TIMEOUT or 3600)")
    p.add_argument("--out", type=Path, default=REPO / "runs", help="runs folder (default ./runs)")
    p.add_argument("--engine", choices=("litert", "mediapipe"), default="litert",
                   help="litert: our models (default); mediapipe: Google's MediaPipe Image Generator as a peer, "
                        "Android only, 512x512 (weights exported by host.export.mediapipe and pushed)")
    p.add_argument("--result-json", type=Path, default=None,
                   help="also write the outcome here as JSON: the session folder, or the error's type, whether it "
                        "is worth a retry, and its message (for drivers such as host.farm)")
    return p


def _validate(args) -> None:
    from host.schedulers import SCHEDULERS

    if args.steps <= 0:
        raise DeployError(f"--steps {args.steps}: must be at least 1")
    if args.size <= 0 or args.size % 64:
        raise DeployError(f"--size {args.size}: must be a positive multiple of 64")
    if args.scheduler not in SCHEDULERS:
        raise DeployError(f"--scheduler {args.scheduler!r}: unknown; choose one of {', '.join(SCHEDULERS)}")
    if args.engine == "mediapipe" and (args.size != 512 or args.ladder or len(args.variant or ()) > 1):
        raise DeployError("--engine mediapipe: one 512x512 run (MediaPipe's Image Generator makes 512x512 images "
                          "with its own pipeline; our variants do not apply)")
    if args.repeats < 1 or args.warmup < 0:
        raise DeployError("--repeats must be >= 1 and --warmup >= 0")
    from host.build.cli import parse_variant

    for v in args.variant or ():
        parse_variant(v, args.quant)  # names the variant at fault before anything is built


def resolve_device(name: str):
    """The :class:`host.devices.Device` to run on: ``host``, a profile name (the attached phone it matches), a
    serial / UDID / adb ``host:port`` endpoint, or ``profile@serial`` (see host.devices.select). Called before
    any build, so a missing or unauthorised phone fails fast with what is attached and how to attach one."""
    from host.devices import select_device

    return select_device(name)


#: device errors worth another attempt: the device or the app went away, or a run took too long
TRANSIENT_ERRORS = ("Disconnected", "RunTimeout", "AppCrashed", "LowMemoryKilled", "DeviceNotFound")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    outcome: dict = {"ok": False}
    try:
        session = _deploy(args)
        outcome = {"ok": True, "session": str(session)}
        return 0
    except (HarnessError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        outcome["error"] = _error_info(e, str(e))
        return 2
    except OSError as e:  # a full disk or an unwritable folder: name the file
        print(f"error: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        outcome["error"] = _error_info(e, f"{e.filename or ''}: {e.strerror}")
        return 2
    finally:
        if args.result_json is not None:
            from host.protocol.jsonio import write_json

            args.result_json.parent.mkdir(parents=True, exist_ok=True)
            write_json(args.result_json, outcome)


def _error_info(e: BaseException, message: str) -> dict:
    kind = type(e).__name__
    return {"type": kind, "transient": kind in TRANSIENT_ERRORS, "message": message}



def _deploy(args) -> Path:
    from host.build.cli import default_artifacts, run_builds
    from host.runtime import CACHE_ENV

    _validate(args)
    # XNNPACK weight caches of the host runner live in the artifact store, next to the models they pack
    os.environ.setdefault(CACHE_ENV, str((args.artifacts or default_artifacts()) / "xnnpack-cache"))
    device = resolve_device(args.device)  # before any build: a missing phone fails fast
    device_name = device.name
    # by default the baseline and the device's optimized set (its profile's runtime.optimized)
    names = (list(RUNGS) if args.ladder else (args.variant or ["baseline", device.profile.runtime.optimized]))
    label = "ladder" if args.ladder else "-vs-".join(names)
    if args.engine == "mediapipe":
        if getattr(device, "platform", "host") != "android":
            raise DeployError(f"--engine mediapipe: the MediaPipe Image Generator peer runs in the Android app only; "
                              f"{device.describe()} is not an Android phone")
        names, label = names[:1], "mediapipe"  # a request (prompt, steps, seed, repeats) for the peer
        _set_mediapipe_engine(args, device)
    builds = []
    for name in names:
        build_args = argparse.Namespace(**{**vars(args), "variant": name, "ladder": False, "image_size": args.size,
                                           "no_verify": False, "threads": 2,
                                           "components": ("text_encoder", "unet", "vae_decoder")})
        builds.extend(run_builds(build_args, log=lambda s: print(f"  build {s}")))

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    device_dir = args.out / device_name
    session = _new_session(device_dir, f"{stamp}_{label}")
    link_latest(device_dir, session)
    print(f"run folder: {session}")

    runs, pushes = [], {}
    t_deploy = time.perf_counter()
    for manifest, build_dir, cached in builds:
        runs.append(_run_variant(args, device, session, manifest, build_dir))
        if getattr(device, "platform", "host") != "host" and device.last_push is not None:
            pushes[runs[-1].name] = device.last_push.to_dict()

    from host.report import render_report, terminal_summary
    from host.traces.perfetto import chrome_trace, merge_traces
    from host.traces.tables import concat_tables, load_run, save_tables

    loaded = [load_run(r) for r in runs]
    save_tables(concat_tables(r.tables for r in loaded), session / "tables")
    merged = merge_traces(chrome_trace(r.records, process_name=r.variant) for r in loaded)
    (session / "timeline.perfetto.json").write_text(json.dumps(merged))
    bench = None
    if getattr(device, "platform", "host") == "host":  # the side-by-side benchmark measured this machine
        from host.bench.pipeline import latest_bench

        bench = latest_bench(args.out, args.model, args.size, args.steps)
    report = render_report(session, session / "report.html", profile=device_name, bench=bench)
    summary = terminal_summary(session)
    if pushes:
        summary += "\n" + push_summary(pushes)
    (session / "summary.txt").write_text(summary + "\n")
    (session / "deploy.json").write_text(json.dumps({
        "device": device_name, "argv": sys.argv[1:], "variants": names,
        "runs": [str(r.relative_to(session)) for r in runs], "report": report.name,
        "push": pushes or None, "deploy_seconds": round(time.perf_counter() - t_deploy, 3)}, indent=2))
    print(summary)
    print(f"report: {report}")
    return session


def push_summary(pushes: dict[str, dict]) -> str:
    """What a deploy moved to the phone, per run (unchanged files are skipped), and the totals."""
    mib = 1 << 20
    lines = [f"push {name}: {p['pushed_bytes'] / mib:.1f} MiB in {p['pushed_files']} file(s), "
             f"{p['skipped_bytes'] / mib:.1f} MiB in {p['skipped_files']} unchanged file(s) skipped, "
             f"{p['seconds']:.1f} s" for name, p in pushes.items()]
    if len(pushes) > 1:
        total = sum(p["pushed_bytes"] for p in pushes.values())
        lines.append(f"pushed {total / mib:.1f} MiB in all, {sum(p['seconds'] for p in pushes.values()):.1f} s")
    return "\n".join(lines)


def _new_session(device_dir: Path, name: str) -> Path:
    """A fresh session folder; a second invocation within the same second gets a numbered sibling."""
    device_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        session = device_dir / (name if n == 1 else f"{name}.{n}")
        try:
            session.mkdir()
            return session
        except FileExistsError:
            continue
    raise DeployError(f"{device_dir}: cannot find a free session folder name for {name}")


def _set_mediapipe_engine(args, device) -> None:
    from host.build.cli import default_artifacts
    from host.build.weights import resolve
    from host.export.mediapipe import cached_export

    root = args.artifacts or default_artifacts()
    weights = resolve(args.model, args.checkpoint, args.seed_weights, args.size, str(root / "checkpoint-index.json"))
    folder = cached_export(weights, root, log=lambda s: print(f"  export {s}"))
    device.set_engine("mediapipe", folder)


def _run_variant(args, device, session: Path, manifest: dict, build_dir: Path) -> Path:
    """Prepare the run folder on the host, then run it on ``device``: for a phone push request, noise and the
    models (unchanged ones are skipped), start the app, follow its trace, pull the results back; on the host
    the Python runner executes the folder in place."""
    from host.devices import DeviceError, RunFailed
    from host.request import prepare_run

    profile = device.profile
    from host.build.cli import variant_label

    v = manifest["variant"]
    name = "mediapipe" if getattr(args, "engine", "litert") == "mediapipe" else variant_label(v["name"], v.get("quantization"))
    run_dir = session / name
    blocks = [{"name": b["name"], "file": str(build_dir / b["file"])} for b in manifest.get("profile_blocks", [])]
    prepare_run(
        run_dir, manifest, build_dir, prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed,
        steps=args.steps, scheduler=args.scheduler, karras=args.karras, guidance=args.guidance, size=args.size,
        runtime={"accelerator": profile.runtime.accelerator, "precision": profile.runtime.precision,
                 "threads": args.threads or profile.runtime.threads, "warmup": args.warmup, "repeats": args.repeats,
                 "residency": getattr(args, "residency", "all")},
        profiling={"memory_interval_ms": args.memory_interval_ms, "per_op": args.per_op,
                   "per_block": bool(blocks), "block_models": blocks, "block_steps": args.block_steps,
                   "block_reference": getattr(args, "block_reference", True)},
        run_id=f"{session.name.split('_')[0]}_{name}",
    )
    shutil.copy2(build_dir / "manifest.json", run_dir / "models" / "manifest.json")
    phone = getattr(device, "platform", "host") != "host"
    timeout = getattr(args, "timeout", None) or float(os.environ.get("SDPHONE_RUN_TIMEOUT", 3600))
    generations = args.warmup + args.repeats
    remote = None
    status: dict = {}
    failing = False
    t0 = time.perf_counter()
    try:
        remote = device.prepare(run_dir)
        if phone:
            with tqdm(desc=f"{name} push", unit="B", unit_scale=True, unit_divisor=1024, file=sys.stdout,
                      dynamic_ncols=True, leave=False) as pbar:
                stats = device.push_models(run_dir, progress=lambda _rel, n: pbar.update(n))
            print(f"  push {name} to {device.describe()}: {stats}")
        t0 = time.perf_counter()
        with tqdm(total=generations * args.steps, desc=f"{name} steps", unit="step", file=sys.stdout,
                  dynamic_ncols=True, leave=True) as bar:
            def progress(record) -> None:
                if getattr(record, "name", None) == "unet_step":
                    bar.update(1)
                elif getattr(record, "cat", None) == "block" and record.name == "conv_in":
                    bar.set_postfix_str(f"per-block pass, step {record.step}")

            device.start(run_dir)
            status = device.wait(timeout, on_record=progress)
    except BaseException:
        failing = True
        raise
    finally:
        if phone:  # whatever the phone wrote comes back, also after a crash or a timeout
            pulled: list[str] = []
            try:
                pulled = device.pull(run_dir) if remote else []
            except (DeviceError, OSError) as e:
                if not failing:
                    raise
                print(f"  pull {name}: {e}", file=sys.stderr)
            try:
                device.write_run_info(run_dir, remote=remote, pulled=pulled, status=status.get("state"))
            except OSError:
                if not failing:
                    raise
        device.cleanup()
    if phone and status.get("state") == "error":
        raise RunFailed(f"run {name} failed on the device: {status.get('message') or 'no message'} "
                        f"(results in {run_dir})", device=device.describe())
    print(f"  run {name}: done in {time.perf_counter() - t0:.1f} s")
    return run_dir


def link_latest(device_dir: Path, session: Path) -> None:
    link = device_dir / "latest"
    tmp = device_dir / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(session.name)
    os.replace(tmp, link)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
