"""The farm configuration: one TOML file, validated on load; errors name the file and the dotted key.

Schema (unknown sections and keys are errors; every key except ``devices[].profile`` has a default)::

    [farm]
    model = "sd14"                 # architecture (host.build): sd14, tiny
    variants = ["baseline", "optimized"]   # or: ladder = true (every rung)
    ladder = false
    steps = 20                     # UNet steps per generation
    size = 512                     # image side, a multiple of 64
    repeats = 3                    # measured generations per (device, variant); the runner repeats in one run
    warmup = 0                     # untimed generations before them
    prompt = "..."
    negative_prompt = ""
    seed = 42                      # initial noise (generated on the host)
    scheduler = "dpmpp_2m"
    guidance = 7.5
    checkpoint = ""                # SD 1.x checkpoint for real images; empty: seeded random weights
    profile_blocks = true          # per-block profile pass (the per-layer metrics)
    block_steps = 2
    reference = true               # host reference image per variant, for the fidelity metric (PSNR)
    out = "runs/farm"              # run folders: <out>/<night>/<device>/<session>/  (relative to the file)
    history = "runs/farm/history"  # the history dataset (relative to the file); may be shared by hosts
    artifacts = ""                 # artifact store (default $SDPHONE_ARTIFACTS or ./artifacts)
    timeout_s = 3600               # per attempt (one variant on one device)
    retries = 2                    # further attempts after a transient failure
    backoff_s = 30                 # wait before retry n: backoff_s * 2**(n-1)

    [[devices]]                    # one worker each, all in parallel
    name = "s23-a"                 # label in the history (default: the profile); unique
    profile = "s23"                # device profile (device_profiles/<profile>.toml)
    serial = "R5CT40XXXXX"         # optional: this phone (serial / UDID) ...
    endpoint = "10.0.0.5:5555"     # ... or a remote adb endpoint handed out by a device-farm service

    [thresholds]                   # the regression verdict (host.farm.verdict)
    window = 7                     # baseline: the last `window` nights before tonight
    min_nights = 3                 # fewer baseline nights: verdict "new" (nothing judged)
    rel = 0.05                     # smallest relative change that counts (latency, memory)
    k = 3.0                        # band: k robust sigmas (1.4826 * MAD of the nightly medians)
    alpha = 0.05                   # one-sided Mann-Whitney U test, when both sides have >= 3 samples
    psnr_drop_db = 3.0             # smallest drop of image fidelity (dB) that counts
    top_layers = 5                 # per-layer movers listed per device and variant
    fail_on_layers = false         # whether a per-layer regression alone fails the night
    [thresholds.metrics]           # optional per-metric overrides of `rel`
    peak_rss_bytes = 0.03
"""
from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host.errors import HarnessError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
ENDPOINT_RE = re.compile(r"[A-Za-z0-9.-]+:[0-9]{1,5}")
SERIAL_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class FarmConfigError(HarnessError):
    """The farm config is missing or invalid; ``str()`` names the file and the key."""


@dataclass(frozen=True)
class FarmDevice:
    name: str
    profile: str
    serial: str = ""
    endpoint: str = ""

    def device_arg(self) -> str:
        """The ``--device`` argument of host.deploy for this worker."""
        target = self.serial or self.endpoint
        return f"{self.profile}@{target}" if target else self.profile


@dataclass(frozen=True)
class Thresholds:
    window: int = 7
    min_nights: int = 3
    rel: float = 0.05
    k: float = 3.0
    alpha: float = 0.05
    psnr_drop_db: float = 3.0
    top_layers: int = 5
    fail_on_layers: bool = False
    metrics: dict[str, float] = field(default_factory=dict)

    def rel_for(self, metric: str) -> float:
        return self.metrics.get(metric, self.rel)


@dataclass(frozen=True)
class FarmConfig:
    path: Path
    devices: tuple[FarmDevice, ...]
    variants: tuple[str, ...]
    model: str = "sd14"
    steps: int = 20
    size: int = 512
    repeats: int = 3
    warmup: int = 0
    prompt: str = "a photograph of an astronaut riding a horse"
    negative_prompt: str = ""
    seed: int = 42
    scheduler: str = "dpmpp_2m"
    guidance: float = 7.5
    checkpoint: str = ""
    profile_blocks: bool = True
    block_steps: int = 2
    reference: bool = True
    out: Path = Path("runs/farm")
    history: Path = Path("runs/farm/history")
    artifacts: str = ""
    timeout_s: float = 3600.0
    retries: int = 2
    backoff_s: float = 30.0
    thresholds: Thresholds = field(default_factory=Thresholds)


_FARM_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": str, "variants": list, "ladder": bool, "steps": int, "size": int, "repeats": int, "warmup": int,
    "prompt": str, "negative_prompt": str, "seed": int, "scheduler": str, "guidance": (int, float),
    "checkpoint": str, "profile_blocks": bool, "block_steps": int, "reference": bool, "out": str, "history": str,
    "artifacts": str, "timeout_s": (int, float), "retries": int, "backoff_s": (int, float),
}
_DEVICE_KEYS = {"name": str, "profile": str, "serial": str, "endpoint": str}
_THRESHOLD_KEYS: dict[str, type | tuple[type, ...]] = {
    "window": int, "min_nights": int, "rel": (int, float), "k": (int, float), "alpha": (int, float),
    "psnr_drop_db": (int, float), "top_layers": int, "fail_on_layers": bool, "metrics": dict,
}


def load_config(path: str | os.PathLike) -> FarmConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FarmConfigError(f"{path}: no such farm config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FarmConfigError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise FarmConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], path: Path) -> FarmConfig:
    def err(key: str, msg: str) -> FarmConfigError:
        return FarmConfigError(f"{path}: {key}: {msg}")

    for section in raw:
        if section not in ("farm", "devices", "thresholds"):
            raise err(section, "unknown section (expected farm, devices, thresholds)")
    farm = _table(raw.get("farm", {}), "farm", _FARM_KEYS, err)
    th = _table(raw.get("thresholds", {}), "thresholds", _THRESHOLD_KEYS, err)

    from host.build.cli import parse_variant
    from models.config import RUNGS, ConfigError, MODELS

    model = farm.get("model", "sd14")
    if model not in MODELS:
        raise err("farm.model", f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if farm.get("ladder") and "variants" in farm:
        raise err("farm.ladder", "give either ladder = true or variants, not both")
    if farm.get("ladder"):
        variants = tuple(RUNGS)
    else:
        variants = tuple(farm.get("variants", ["baseline", "optimized"]))
        if not variants:
            raise err("farm.variants", "must name at least one variant")
        for i, v in enumerate(variants):
            if not isinstance(v, str):
                raise err(f"farm.variants[{i}]", f"expected a variant name, got {v!r}")
            try:
                parse_variant(v)  # names (and quantization labels) as host.deploy takes them
            except ConfigError as e:
                raise err(f"farm.variants[{i}]", str(e)) from None
        if len(set(variants)) != len(variants):
            raise err("farm.variants", "names a variant twice")
    positive = {"steps": 1, "repeats": 1, "timeout_s": 1e-9, "block_steps": 0, "warmup": 0, "retries": 0,
                "backoff_s": 0, "seed": 0}
    for key, low in positive.items():
        if key in farm and farm[key] < low:
            raise err(f"farm.{key}", f"must be >= {low:g}, got {farm[key]}")
    size = farm.get("size", 512)
    if size <= 0 or size % 64:
        raise err("farm.size", f"must be a positive multiple of 64, got {size}")
    from host.schedulers import SCHEDULERS

    scheduler = farm.get("scheduler", "dpmpp_2m")
    if scheduler not in SCHEDULERS:
        raise err("farm.scheduler", f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")

    devices = _devices(raw.get("devices"), err)
    thresholds = _thresholds(th, err)
    base = path.parent
    return FarmConfig(
        path=path, devices=devices, variants=variants, model=model, steps=farm.get("steps", 20), size=size,
        repeats=farm.get("repeats", 3), warmup=farm.get("warmup", 0),
        prompt=farm.get("prompt", FarmConfig.prompt), negative_prompt=farm.get("negative_prompt", ""),
        seed=farm.get("seed", 42), scheduler=scheduler, guidance=float(farm.get("guidance", 7.5)),
        checkpoint=farm.get("checkpoint", ""), profile_blocks=farm.get("profile_blocks", True),
        block_steps=farm.get("block_steps", 2), reference=farm.get("reference", True),
        out=(base / farm.get("out", "runs/farm")).resolve(),
        history=(base / farm.get("history", "runs/farm/history")).resolve(),
        artifacts=str((base / farm["artifacts"]).resolve()) if farm.get("artifacts") else "",
        timeout_s=float(farm.get("timeout_s", 3600)), retries=farm.get("retries", 2),
        backoff_s=float(farm.get("backoff_s", 30)), thresholds=thresholds)


def _table(value: Any, name: str, keys: dict, err) -> dict:
    if not isinstance(value, dict):
        raise err(name, "must be a table")
    for k, v in value.items():
        if k not in keys:
            raise err(f"{name}.{k}", f"unknown key (expected one of {', '.join(keys)})")
        want = keys[k]
        if isinstance(v, bool) and want is not bool and bool not in (want if isinstance(want, tuple) else (want,)):
            raise err(f"{name}.{k}", f"must be {_type_name(want)}, got a boolean")
        if not isinstance(v, want):
            raise err(f"{name}.{k}", f"must be {_type_name(want)}, got {type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            raise err(f"{name}.{k}", "must be finite")
    return value


def _type_name(t) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "an array",
             dict: "a table"}
    return " or ".join(names[x] for x in (t if isinstance(t, tuple) else (t,)) if x in names)


def _devices(value: Any, err) -> tuple[FarmDevice, ...]:
    from host.profiles import ProfileError, load_profile

    if not value:
        raise err("devices", "no [[devices]]: give at least one (profile = \"host\" runs on this machine)")
    if not isinstance(value, list):
        raise err("devices", "must be an array of tables ([[devices]])")
    out, names = [], set()
    for i, d in enumerate(value):
        key = f"devices[{i}]"
        d = _table(d, key, _DEVICE_KEYS, err)
        if "profile" not in d:
            raise err(f"{key}.profile", "missing (the device profile, e.g. \"s23\" or \"host\")")
        try:
            profile = load_profile(d["profile"])
        except ProfileError as e:
            raise err(f"{key}.profile", str(e)) from None
        name = d.get("name", d["profile"])
        if not NAME_RE.fullmatch(name):
            raise err(f"{key}.name", f"{name!r}: use letters, digits and . _ + - (at most 64)")
        if name in names:
            raise err(f"{key}.name", f"{name!r} is used twice; give each device a name")
        names.add(name)
        serial, endpoint = d.get("serial", ""), d.get("endpoint", "")
        if serial and endpoint:
            raise err(key, "give serial or endpoint, not both")
        if serial and not SERIAL_RE.fullmatch(serial):
            raise err(f"{key}.serial", f"{serial!r} is not a device serial / UDID")
        if endpoint and not ENDPOINT_RE.fullmatch(endpoint):
            raise err(f"{key}.endpoint", f"{endpoint!r}: expected host:port")
        if (serial or endpoint) and profile.device.platform == "host":
            raise err(key, "the host profile takes no serial or endpoint")
        if endpoint and profile.device.platform != "android":
            raise err(f"{key}.endpoint", "remote endpoints are adb endpoints (android profiles only)")
        out.append(FarmDevice(name=name, profile=d["profile"], serial=serial, endpoint=endpoint))
    return tuple(out)


def _thresholds(th: dict, err) -> Thresholds:
    from host.farm.metrics import METRICS

    for key in ("window", "min_nights"):
        if key in th and th[key] < 1:
            raise err(f"thresholds.{key}", f"must be >= 1, got {th[key]}")
    for key in ("rel", "k", "psnr_drop_db"):
        if key in th and th[key] < 0:
            raise err(f"thresholds.{key}", f"must be >= 0, got {th[key]}")
    if "alpha" in th and not 0 < th["alpha"] < 1:
        raise err("thresholds.alpha", f"must be between 0 and 1, got {th['alpha']}")
    if th.get("top_layers", 0) < 0:
        raise err("thresholds.top_layers", "must be >= 0")
    metrics = {}
    for k, v in th.get("metrics", {}).items():
        if k not in METRICS:
            raise err(f"thresholds.metrics.{k}", f"unknown metric; choose from {', '.join(METRICS)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise err(f"thresholds.metrics.{k}", "must be a number >= 0 (relative change)")
        metrics[k] = float(v)
    kw = {k: v for k, v in th.items() if k != "metrics"}
    return Thresholds(**kw, metrics=metrics)
