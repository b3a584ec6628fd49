"""``trace.jsonl``: append-only JSON lines, durable line by line, readable after a crash.

:class:`TraceWriter` writes one record per line and flushes and fsyncs after each, so a runner that
dies leaves every finished record on disk; at worst the last line is cut short. :func:`read_trace`
skips such a truncated last line (and only the last one: a bad line in the middle is an error).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Mapping

from host.protocol.messages import MetaRecord, TraceRecord, record_from_dict
from host.protocol.validation import ProtocolError

Record = TraceRecord | Mapping[str, Any]


class TraceWriter:
    """Writes trace records to ``path``, one JSON object per line; thread-safe.

    ``append=False`` (the default) starts a new trace, replacing an old file.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, append: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if not append:
            open(self.path, "w").close()
        # Unbuffered append: each record is one write(2) at the end of the file, so another process may append
        # records to the same trace at the same time (the runner's memory sampler does) without a torn line.
        self._file = open(self.path, "ab", buffering=0)

    def write(self, record: Record) -> None:
        """Append ``record`` (a record dataclass or a dict) as one line, then flush and fsync."""
        data = record.to_dict() if hasattr(record, "to_dict") else dict(record)  # type: ignore[union-attr]
        line = json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n"
        with self._lock:
            if self._file.closed:
                raise ValueError(f"{self.path}: trace is closed")
            data = line.encode("utf-8")
            while data:
                data = data[self._file.write(data):]
            os.fsync(self._file.fileno())

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lines(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """(line number, parsed object) for each line; a truncated last line is skipped."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")  # when text ends with "\n" the last item is "" and every line is complete
    out: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            if n == len(lines):
                break  # the last line, cut short by a crash (no newline yet)
            raise ProtocolError(f"{Path(path).name}:{n}: not a JSON line ({e.msg})") from None
    return out


def read_trace_dicts(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a trace as plain dicts (unvalidated); a truncated last line is skipped."""
    return [d for _, d in _lines(path)]


def read_trace(path: str | os.PathLike) -> list[TraceRecord]:
    """The records of a trace as dataclasses, each validated against the schema; the first must be
    ``meta``. A truncated last line is skipped; errors name the file and line (``trace.jsonl:7``)."""
    name = Path(path).name
    out = [record_from_dict(d, source=f"{name}:{n}") for n, d in _lines(path)]
    if out and not isinstance(out[0], MetaRecord):
        raise ProtocolError(f"{name}:1: $.type: the first record must be meta, got {out[0].TYPE!r}")
    return out
