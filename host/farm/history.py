"""The farm history: append-only, hive-partitioned parquet datasets under one folder.

    <history>/SCHEMA.json                                          {"schema_version": 1, datasets and columns}
    <history>/metrics/night=<YYYY-MM-DD>/device=<d>/variant=<v>/part-<uuid>.parquet   metric rows
    <history>/attempts/night=<YYYY-MM-DD>/device=<d>/part-<uuid>.parquet             every attempt, ok or not
    <history>/nights/night=<YYYY-MM-DD>/part-<uuid>.parquet                          one row per finished farm run
    <history>/verdicts/<night>_<run_id>.json                                         the verdict of that run

Every file is written once and never changed: rows go to a hidden temporary file in the target folder
(``.part-*.tmp``), are fsynced, then renamed into place. A run killed at any moment leaves complete
files only (readers skip names starting with ``.`` or ``_``, as pyarrow does), so a crashed night
never corrupts the store, and several hosts can append to one shared location (a network file
system) at the same time: names are unique (host, process and a random id) and nothing is rewritten.

Query it with pandas: ``pd.read_parquet("<history>/metrics")`` (the partition keys come back as
columns), or :func:`read` here, which restores the fixed dtypes below. Partition values are
percent-encoded in the folder names (``variant=%2Bflash``) and decoded on read.
"""
from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import quote, unquote

import pandas as pd

from host.errors import HarnessError

SCHEMA_VERSION = 1

#: dataset -> (partition keys, every column with its pandas dtype; partition keys included)
DATASETS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "metrics": (("night", "device", "variant"), {
        "night": "str", "device": "str", "variant": "str", "schema_version": "Int64", "run_id": "str",
        "profile": "str", "target": "str", "model": "str", "metric": "str", "layer": "str", "repeat": "Int64",
        "value": "float64", "unit": "str", "session": "str", "build_key": "str", "recorded_at": "str",
        "recorded_by": "str"}),
    "attempts": (("night", "device"), {
        "night": "str", "device": "str", "schema_version": "Int64", "run_id": "str", "variant": "str",
        "attempt": "Int64", "started_at": "str", "duration_s": "float64", "outcome": "str", "error_type": "str",
        "message": "str", "session": "str", "recorded_by": "str"}),
    "nights": (("night",), {
        "night": "str", "schema_version": "Int64", "run_id": "str", "config": "str", "started_at": "str",
        "finished_at": "str", "verdict": "str", "devices": "Int64", "failed_devices": "Int64",
        "regressions": "Int64", "recorded_by": "str"}),
}


class HistoryError(HarnessError):
    pass


def recorder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def ensure(root: str | os.PathLike) -> Path:
    """Create the store (or check an existing one's schema version); returns its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    schema = root / "SCHEMA.json"
    want = {"schema_version": SCHEMA_VERSION,
            "datasets": {k: {"partitions": list(p), "columns": c} for k, (p, c) in DATASETS.items()}}
    if schema.is_file():
        try:
            have = json.loads(schema.read_text())
            version = int(have["schema_version"])
        except (OSError, ValueError, KeyError, TypeError):
            raise HistoryError(f"{schema}: unreadable schema file") from None
        if version != SCHEMA_VERSION:
            raise HistoryError(f"{schema}: schema_version {version}, this tool reads {SCHEMA_VERSION}")
        return root
    _write_atomic(schema, json.dumps(want, indent=2).encode())
    return root


def append(root: str | os.PathLike, dataset: str, rows: Iterable[Mapping[str, Any]]) -> list[Path]:
    """Write ``rows`` as new part files (one per partition); returns the files written."""
    from host.traces.tables import typed_frame

    parts, columns = DATASETS[dataset]
    frame = typed_frame([{**r, "schema_version": SCHEMA_VERSION} for r in rows], columns)
    if frame.empty:
        return []
    for key in parts:
        if frame[key].isna().any():
            raise HistoryError(f"{dataset}: a row has no {key}")
    written = []
    root = Path(root)
    for values, group in frame.groupby(list(parts), sort=True):
        values = values if isinstance(values, tuple) else (values,)
        folder = root / dataset
        for k, v in zip(parts, values):
            folder = folder / f"{k}={quote(str(v), safe='')}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        data = group.drop(columns=list(parts)).reset_index(drop=True)
        written.append(_write_parquet(folder / name, data))
    return written


def _write_parquet(path: Path, frame: pd.DataFrame) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(root: str | os.PathLike, dataset: str) -> pd.DataFrame:
    """The whole dataset with the fixed columns and dtypes (empty when nothing was written yet).

    Files are read one by one, so a stray unreadable file (for example one a foreign tool left half
    written under a visible name) is reported by name instead of hiding the rest."""
    from host.traces.tables import typed_frame

    parts, columns = DATASETS[dataset]
    base = Path(root) / dataset
    frames = []
    for f in sorted(base.rglob("*.parquet")) if base.is_dir() else []:
        rel = f.relative_to(base).parts
        if any(p.startswith((".", "_")) for p in rel):
            continue
        try:
            df = pd.read_parquet(f)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise HistoryError(f"{f}: unreadable part file ({type(e).__name__}: {e})") from None
        for seg in rel[:-1]:
            k, _, v = seg.partition("=")
            if k in parts:
                df[k] = unquote(v)
        frames.append(df)
    if not frames:
        return typed_frame([], columns)
    df = pd.concat(frames, ignore_index=True)
    for c, d in columns.items():
        if c not in df.columns:
            df[c] = None
    return typed_frame(df[list(columns)].to_dict("records"), columns)


def write_verdict(root: str | os.PathLike, night: str, run_id: str, verdict: Mapping[str, Any]) -> Path:
    path = Path(root) / "verdicts" / f"{night}_{run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(verdict, indent=2, default=_json_default).encode())
    return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)
