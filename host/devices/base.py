"""The one interface every device implements, and what the transports share.

A run on any device goes the same way (``host.deploy`` drives it)::

    device = select_device("s23")               # or "host", a serial, a UDID, "s23@<serial>"
    remote = device.prepare(run_dir)            # remote run folder; request.json + noise.bin are there
    stats = device.push_models(run_dir)         # PushStats: files/bytes pushed and skipped (sha256 match)
    device.start(run_dir)                       # launches the runner
    status = device.wait(timeout, on_record)    # follows trace.jsonl; raises on crash / timeout / disconnect
    device.pull(run_dir)                        # trace.jsonl, image.png, image.f32, status.json back here
    device.cleanup()                            # stop the app, drop the remote run folder (not the models)

Remote layout (phones): ``<run_root>/<run_id>/`` holds one run; models live once per build in
``<run_root>/_models/<key>/`` (``key`` = hash of the model files' names and sha256s) and the pushed
``request.json`` says ``"models_dir": "../_models/<key>"``, so an unchanged build is never pushed twice.
The host's copy of ``request.json`` is left as ``prepare_run`` wrote it.
"""
from __future__ import annotations

import abc
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from host.devices.contract import SEGMENT_RE
from host.devices.errors import DeviceError
from host.profiles import DeviceProfile

REQUEST_FILE = "request.json"
NOISE_FILE = "noise.bin"
TRACE_FILE = "trace.jsonl"
STATUS_FILE = "status.json"
RESULT_FILES = ("trace.jsonl", "image.png", "image.f32", "status.json")  # status last: it marks completion
HOST_MEMORY_FILE = "host_memory.jsonl"
DEVICE_INFO_FILE = "device_run.json"
MODELS_STORE = "_models"
MODELS_MANIFEST = ".sdphone-models.json"
RUN_ID_RE = re.compile(r"[A-Za-z0-9._+-]{1,200}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")

OnRecord = Callable[[Any], None]


@dataclass
class PushStats:
    pushed_files: int = 0
    pushed_bytes: int = 0
    skipped_files: int = 0
    skipped_bytes: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)  # the relative names that were pushed

    def to_dict(self) -> dict[str, Any]:
        return {"pushed_files": self.pushed_files, "pushed_bytes": self.pushed_bytes,
                "skipped_files": self.skipped_files, "skipped_bytes": self.skipped_bytes,
                "seconds": round(self.seconds, 3), "files": list(self.files)}

    def __str__(self) -> str:
        mb = 1 << 20
        return (f"pushed {self.pushed_files} files ({self.pushed_bytes / mb:.1f} MiB), skipped {self.skipped_files} "
                f"unchanged ({self.skipped_bytes / mb:.1f} MiB) in {self.seconds:.1f} s")


@dataclass(frozen=True)
class ModelFile:
    rel: str        # relative to models_dir, '/'-separated (e.g. "unet.tflite", "blocks/conv_in.tflite")
    sha256: str
    local: Path
    size: int


@dataclass(frozen=True)
class LocalRun:
    """What a transport needs from a host run folder made by ``host.request.prepare_run``."""

    run_dir: Path
    run_id: str
    request: dict[str, Any]
    models: tuple[ModelFile, ...]

    @property
    def models_key(self) -> str:
        h = hashlib.sha256("".join(f"{m.rel}\0{m.sha256}\n" for m in sorted(self.models, key=lambda m: m.rel))
                           .encode()).hexdigest()
        return h[:20]

    def device_request(self, models_dir: str) -> bytes:
        """request.json as pushed to a device: the same request, models read from the shared store."""
        from host.protocol.jsonio import dumps

        return (dumps({**self.request, "models_dir": models_dir}) + "\n").encode()  # formatted as prepare_run writes


def _check_rel(rel: str, what: str) -> str:
    parts = rel.split("/") if isinstance(rel, str) else [""]
    if any(p in ("", ".", "..") or not SEGMENT_RE.fullmatch(p) for p in parts):
        raise DeviceError(f"{what}: {rel!r} is not a plain relative path of [A-Za-z0-9._+-] segments")
    return rel


def read_local_run(run_dir: str | os.PathLike) -> LocalRun:
    """Parse ``run_dir/request.json`` and locate the model files it names (checked names, sizes)."""
    run_dir = Path(run_dir)
    try:
        request = json.loads((run_dir / REQUEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DeviceError(f"{run_dir / REQUEST_FILE}: cannot read the run request ({e})") from None
    run_id = request.get("run_id")
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id) or run_id in (".", ".."):
        raise DeviceError(f"{run_dir / REQUEST_FILE}: run_id {run_id!r} does not match {RUN_ID_RE.pattern}")
    base = Path(request.get("models_dir") or "models")
    base = base if base.is_absolute() else run_dir / base
    specs = list((request.get("models") or {}).values())
    specs += [b for b in (request.get("profiling") or {}).get("block_models") or () if isinstance(b, dict)]
    models, seen = [], set()
    for spec in specs:
        rel = _check_rel(spec.get("file"), f"{run_dir / REQUEST_FILE}: model file")
        sha = spec.get("sha256")
        if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha):
            raise DeviceError(f"{run_dir / REQUEST_FILE}: {rel}: sha256 missing or malformed (needed to skip "
                              "unchanged models)")
        if rel in seen:
            continue
        seen.add(rel)
        local = base / rel
        if not local.is_file():
            raise DeviceError(f"{local}: model file not found")
        models.append(ModelFile(rel=rel, sha256=sha, local=local, size=local.stat().st_size))
    if not (run_dir / NOISE_FILE).is_file():
        raise DeviceError(f"{run_dir / NOISE_FILE}: not found (prepare_run writes it)")
    return LocalRun(run_dir=run_dir, run_id=run_id, request=request, models=tuple(models))


class TraceFollower:
    """Turns appended chunks of a device's trace.jsonl into records (complete lines only)."""

    def __init__(self, on_record: OnRecord | None = None) -> None:
        self.on_record = on_record
        self.offset = 0
        self._pending = b""
        self.last_lines: list[str] = []

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.offset += len(chunk)
        data = self._pending + chunk
        *lines, self._pending = data.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            self.last_lines = (self.last_lines + [line])[-50:]
            if self.on_record is None:
                continue
            try:
                from host.protocol import record_from_dict

                record = record_from_dict(json.loads(line), source=TRACE_FILE)
            except Exception:  # noqa: BLE001  (progress only: the pulled trace is validated by its readers)
                continue
            self.on_record(record)


class MemoryLog:
    """``host_memory.jsonl`` in the local run folder: memory records sampled from the host side.

    ``t`` is seconds since :meth:`Device.start` on the host's monotonic clock (the runner's own clock starts
    a little later, when the app process is up)."""

    def __init__(self, path: Path, source: str) -> None:
        self.path = path
        self.source = source
        self.t0 = time.monotonic()
        self.peaks: dict[str, int] = {}
        path.unlink(missing_ok=True)

    def write(self, rss_bytes: int, source: str | None = None) -> dict[str, Any]:
        """Append one memory record (``peak_bytes``: the largest value so far of the same source)."""
        from host.protocol import MemoryRecord, TraceWriter

        source = source or self.source
        peak = self.peaks[source] = max(self.peaks.get(source, 0), int(rss_bytes))
        rec = MemoryRecord(t=round(time.monotonic() - self.t0, 4), rss_bytes=int(rss_bytes), source=source,
                           peak_bytes=peak)
        with TraceWriter(self.path, append=True) as w:
            w.write(rec)
        return rec.to_dict()


class Device(abc.ABC):
    """A place a run folder can be executed: the host itself, an Android phone, an iPhone."""

    platform: str = ""

    def __init__(self, profile: DeviceProfile, serial: str) -> None:
        self.profile = profile
        self.serial = serial
        self.last_push: PushStats | None = None

    @property
    def name(self) -> str:
        """The profile name (``s23``), used for the runs/<device>/ folder."""
        return self.profile.name

    def describe(self) -> str:
        return f"{self.name} ({self.serial})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    @abc.abstractmethod
    def prepare(self, run_dir_local: str | os.PathLike) -> str:
        """Make the remote run folder (request.json and noise.bin in place); return its path on the device."""

    @abc.abstractmethod
    def push_models(self, run_dir_local: str | os.PathLike,
                    progress: Callable[[str, int], None] | None = None) -> PushStats:
        """Push the request's model files, skipping those already there with the same sha256."""

    @abc.abstractmethod
    def start(self, run_dir_local: str | os.PathLike) -> None:
        """Launch the runner on the prepared run folder."""

    @abc.abstractmethod
    def wait(self, timeout: float | None, on_record: OnRecord | None = None) -> dict[str, Any]:
        """Block until status.json is final; return it. Raises AppCrashed / RunTimeout / Disconnected."""

    @abc.abstractmethod
    def pull(self, run_dir_local: str | os.PathLike) -> list[str]:
        """Copy the results (trace.jsonl, image.png, image.f32, status.json) that exist into the local folder."""

    @abc.abstractmethod
    def sample_memory(self) -> dict[str, Any] | None:
        """One host-side memory sample of the runner (a memory trace record as a dict), or None."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Stop the runner and log followers, remove the remote run folder (models stay). Never raises."""

    def write_run_info(self, run_dir_local: str | os.PathLike, **extra: Any) -> None:
        """``device_run.json`` in the local run folder: which device, serial, remote folder, push stats."""
        info = {"device": self.name, "platform": self.platform, "serial": self.serial, **extra}
        if self.last_push is not None:
            info["push"] = self.last_push.to_dict()
        Path(run_dir_local, DEVICE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
