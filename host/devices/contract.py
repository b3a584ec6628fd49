"""The host side of the app contracts: ``android_app/host_contract.json`` and ``ios_app/host_contract.json``.

The runner apps own these files (package / bundle id, how a run is started, where run folders live on the
device); the transports read them at run time through :func:`load_android_contract` /
:func:`load_ios_contract`. ``$SDPHONE_ANDROID_CONTRACT`` / ``$SDPHONE_IOS_CONTRACT`` point elsewhere.
Every value that reaches a device command is checked against a strict pattern here, once.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from host.devices.errors import ContractError

REPO = Path(__file__).resolve().parents[2]
ANDROID_CONTRACT = REPO / "android_app" / "host_contract.json"
IOS_CONTRACT = REPO / "ios_app" / "host_contract.json"
ANDROID_CONTRACT_ENV = "SDPHONE_ANDROID_CONTRACT"
IOS_CONTRACT_ENV = "SDPHONE_IOS_CONTRACT"

PACKAGE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
ACTIVITY_RE = re.compile(r"\.?[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*(\$[A-Za-z0-9_]+)?")
KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")
TAG_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
LAUNCH_ARG_RE = re.compile(r"-{0,2}[A-Za-z][A-Za-z0-9_.-]{0,99}")
SEGMENT_RE = re.compile(r"[A-Za-z0-9._+-]+")


def check_remote_path(path: str, *, absolute: bool = True, what: str = "path") -> str:
    """``path`` if every segment is ``[A-Za-z0-9._+-]+`` (no ``.``/``..``, no empty segments), else ValueError."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{what} {path!r}: empty")
    if absolute != path.startswith("/"):
        raise ValueError(f"{what} {path!r}: must be {'absolute' if absolute else 'relative'}")
    parts = path.strip("/").split("/")
    if path.endswith("/") and path != "/" or any(p in ("", ".", "..") or not SEGMENT_RE.fullmatch(p) for p in parts):
        raise ValueError(f"{what} {path!r}: only segments of letters, digits and . _ + - are allowed")
    return path


def _find(data: Mapping[str, Any], keys: Sequence[str]) -> Any:
    """The value of the first of ``keys`` present at the top level or one level down."""
    for k in keys:
        if k in data:
            return data[k]
    for v in data.values():
        if isinstance(v, Mapping):
            for k in keys:
                if k in v:
                    return v[k]
    return None


def _load(path: Path, platform: str) -> dict[str, Any]:
    if not path.is_file():
        raise ContractError(f"{path}: not found; the {platform} runner app defines it (or set "
                            f"${ANDROID_CONTRACT_ENV if platform == 'Android' else IOS_CONTRACT_ENV})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ContractError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise ContractError(f"{path}: expected a JSON object")
    return data


class _Reader:
    def __init__(self, path: Path, data: dict[str, Any]):
        self.path, self.data = path, data

    def get(self, keys: Sequence[str], pattern: re.Pattern | None = None, required: bool = True,
            kind: type = str) -> Any:
        v = _find(self.data, keys)
        if v is None:
            if required:
                raise ContractError(f"{self.path}: missing {keys[0]!r} (also accepted: {', '.join(keys[1:]) or '-'})")
            return None
        if kind is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ContractError(f"{self.path}: {keys[0]}: expected an integer, got {v!r}")
            return v
        if not isinstance(v, str):
            raise ContractError(f"{self.path}: {keys[0]}: expected a string, got {v!r}")
        if pattern is not None and not pattern.fullmatch(v):
            raise ContractError(f"{self.path}: {keys[0]}: {v!r} does not match {pattern.pattern}")
        return v

    def remote_path(self, keys: Sequence[str], absolute: bool) -> str:
        v = self.get(keys)
        try:
            return check_remote_path(v.rstrip("/") if v != "/" else v, absolute=absolute, what=keys[0])
        except ValueError as e:
            raise ContractError(f"{self.path}: {e}") from None

    def local_path(self, keys: Sequence[str]) -> Path | None:
        v = self.get(keys, required=False)
        if v is None:
            return None
        p = Path(v)
        return p if p.is_absolute() else self.path.parent / p


@dataclass(frozen=True)
class AndroidContract:
    package: str              # application id, e.g. "dev.sdphone.runner"
    activity: str             # launched with `am start -n package/activity`
    intent_extra: str         # string extra carrying the on-device run folder
    logcat_tag: str           # the app's log tag
    run_root: str             # absolute on-device folder holding run folders (app's external files dir)
    version_code: int | None  # the lowest versionCode this host accepts (optional)
    apk: Path | None          # default APK to install (relative paths are relative to the contract file)
    models_root: str | None = None     # absolute folder for model stores shared by runs (else <run_root>/_models)
    finished_marker: str | None = None  # first word of the app's last log line of a run ("RUN_FINISHED")
    engine_extra: str | None = None     # string extra choosing the engine ("engine"), and its MediaPipe value
    engine_mediapipe: str | None = None
    mediapipe_dir_extra: str | None = None  # string extra with the MediaPipe weights folder
    mediapipe_root: str | None = None   # on-device folder holding MediaPipe weight folders (one per export)
    path: str = ""

    @property
    def component(self) -> str:
        return f"{self.package}/{self.activity}"


@dataclass(frozen=True)
class IosContract:
    bundle_id: str            # CFBundleIdentifier of the runner app
    launch_argument: str      # the app is launched with [launch_argument, <run_root>/<run_id>]
    run_root: str             # run folders, relative to the app's home (container): "Documents/runs"
    bundle_version: str | None  # the CFBundleVersion this host expects (older installs are upgraded)
    ipa: Path | None          # default .ipa to install
    path: str = ""


def load_android_contract(path: str | os.PathLike | None = None, env: Mapping[str, str] = os.environ
                          ) -> AndroidContract:
    p = Path(path or env.get(ANDROID_CONTRACT_ENV) or ANDROID_CONTRACT)
    r = _Reader(p, _load(p, "Android"))
    package = r.get(("package_id", "package", "application_id", "applicationId", "package_name"), PACKAGE_RE)
    activity = r.get(("headless_activity", "activity", "activity_class", "launch_activity"), ACTIVITY_RE)
    if activity.startswith(package + "."):
        activity = activity[len(package):]  # am start accepts both; keep the short form
    apk = r.local_path(("apk", "apk_path"))
    if apk is None:  # the app's own build output (./gradlew :app:assembleRelease, or assembleDebug)
        outputs = p.parent / "app" / "build" / "outputs" / "apk"
        apk = next((a for a in (outputs / "release" / "app-release.apk", outputs / "debug" / "app-debug.apk")
                    if a.is_file()), None)
    models_root = None
    if _find(r.data, ("device_models_root", "models_root")) is not None:
        models_root = r.remote_path(("device_models_root", "models_root"), absolute=True)
    mediapipe_root = None
    if _find(r.data, ("device_mediapipe_model_dir",)) is not None:
        mediapipe_root = posixpath.dirname(r.remote_path(("device_mediapipe_model_dir",), absolute=True))
    return AndroidContract(
        package=package, activity=activity,
        intent_extra=r.get(("extra_run_dir", "intent_extra", "intent_extra_key", "run_dir_extra"), KEY_RE),
        logcat_tag=r.get(("log_tag", "logcat_tag", "tag"), TAG_RE),
        run_root=r.remote_path(("device_runs_root", "run_root", "device_run_root", "runs_dir"), absolute=True),
        version_code=r.get(("version_code", "min_version_code"), kind=int, required=False),
        apk=apk, models_root=models_root,
        finished_marker=r.get(("log_finished_marker", "finished_marker"), KEY_RE, required=False),
        engine_extra=r.get(("extra_engine",), KEY_RE, required=False),
        engine_mediapipe=r.get(("engine_mediapipe",), KEY_RE, required=False),
        mediapipe_dir_extra=r.get(("extra_mediapipe_model_dir",), KEY_RE, required=False),
        mediapipe_root=mediapipe_root, path=str(p))


def load_ios_contract(path: str | os.PathLike | None = None, env: Mapping[str, str] = os.environ) -> IosContract:
    p = Path(path or env.get(IOS_CONTRACT_ENV) or IOS_CONTRACT)
    r = _Reader(p, _load(p, "iOS"))
    root = r.get(("documents_run_root", "run_root", "documents_root")).strip("/")
    if root != "Documents" and not root.startswith("Documents/"):
        root = f"Documents/{root}"  # a root given relative to Documents
    try:
        check_remote_path(root, absolute=False, what="documents_run_root")
    except ValueError as e:
        raise ContractError(f"{p}: {e}") from None
    return IosContract(
        bundle_id=r.get(("bundle_id", "bundle_identifier", "CFBundleIdentifier"), PACKAGE_RE),
        launch_argument=r.get(("run_dir_argument", "launch_argument", "launch_arg"), LAUNCH_ARG_RE),
        run_root=root,
        bundle_version=r.get(("bundle_version", "CFBundleVersion", "min_bundle_version"), required=False),
        ipa=r.local_path(("ipa", "ipa_path")), path=str(p))
