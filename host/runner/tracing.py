"""The runner's clock and span helper over a :class:`TraceWriter`."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from host.protocol.messages import EventRecord, SpanRecord, TraceRecord
from host.protocol.trace import TraceWriter


class Clock:
    """Seconds since the runner started, on the monotonic high-resolution clock."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._t0


def _r(seconds: float) -> float:
    return round(seconds, 6)


class Tracer:
    """Writes records stamped with ``clock``; :meth:`span` times a block of code."""

    def __init__(self, writer: TraceWriter, clock: Clock, on_record: Callable[[TraceRecord], None] | None = None) -> None:
        self.writer = writer
        self.clock = clock
        self.on_record = on_record  # e.g. a progress bar; sees every record after it is written

    def now(self) -> float:
        return _r(self.clock.now())

    def write(self, record: TraceRecord) -> None:
        self.writer.write(record)
        if self.on_record is not None:
            self.on_record(record)

    def event(self, name: str, message: str, args: Mapping[str, Any] | None = None) -> None:
        self.write(EventRecord(t=self.now(), name=name, message=message, args=args))

    @contextmanager
    def span(self, name: str, cat: str, *, component: str | None = None, step: int | None = None,
             repeat: int = 0, warmup: bool = False, args: Mapping[str, Any] | None = None) -> Iterator[None]:
        """Time the ``with`` body and write its span when the body finishes (nothing if it raises)."""
        start = self.clock.now()
        yield
        end = self.clock.now()
        self.write(SpanRecord(t=_r(end), name=name, cat=cat, start=_r(start), dur=_r(end - start),
                              component=component, step=step, repeat=repeat, warmup=warmup, args=args))
