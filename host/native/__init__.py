"""Native helpers the host runtime needs where Python cannot act, built from source on first use.

A LiteRT model load is one call that holds Python's interpreter lock from start to end, so nothing written in
Python runs while XNNPACK reads the model file to pack its weights. :func:`watch_file_pages` runs native
threads (``page_release.c``) during such a call: one keeps the read-only mappings of one file out of the
process's resident set, so the pages XNNPACK has already packed from do not stack up on top of the packed
copies; the other faults in, from the second core, the anonymous memory the load maps (the packed weights,
XNNPACK's workspace), which the loading thread would otherwise fault in alone. The library is compiled with the
C compiler (``$CC``, else ``cc``) into ``$XDG_CACHE_HOME/sdphone/native`` (``SDPHONE_NATIVE_CACHE`` overrides),
once per source version; where that cannot be done the watch is skipped, the load works as before, and
:data:`status` says why.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from host.errors import HarnessError

SOURCE = Path(__file__).with_name("page_release.c")
CACHE_ENV = "SDPHONE_NATIVE_CACHE"
#: "off" disables the watch; a number sets its interval in milliseconds
WATCH_ENV = "SDPHONE_PAGE_WATCH"
#: "off" leaves the load's page faults to the loading thread alone
FILL_ENV = "SDPHONE_LOAD_FILL"
DEFAULT_INTERVAL_MS = 50

_lib: ctypes.CDLL | None = None
#: why the library is unavailable ("" while it is available or not yet asked for); set once per process
status = ""


@dataclass
class WatchResult:
    """What a watch did: ``passes`` over /proc/self/maps, address range advised in bytes (summed over passes),
    or ``skipped`` with the reason it did not run; ``filled_bytes`` of new anonymous memory the filler faulted
    in, or ``fill_skipped`` with the reason it did not run."""
    passes: int = 0
    advised_bytes: int = 0
    skipped: str = ""
    filled_bytes: int = 0
    fill_skipped: str = ""


def cache_dir(env=os.environ) -> Path:
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV])
    return Path(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "sdphone" / "native"


def library_path(env=os.environ) -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    return cache_dir(env) / f"page_release-{digest}.so"


def build(env=os.environ) -> Path:
    """Compiles the library if this source version has not been built yet; returns its path. Raises OSError
    with the compiler's first line of complaint."""
    out = library_path(env)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    cmd = [*shlex.split(env.get("CC") or "cc"), "-O2", "-shared", "-fPIC", "-pthread", "-o", str(tmp), str(SOURCE)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OSError(f"{cmd[0]}: cannot run the C compiler ({e})") from None
    try:
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]
            raise OSError(f"{cmd[0]}: compiling {SOURCE.name} failed ({first})")
        os.replace(tmp, out)  # complete or absent: a concurrent build renames the same bytes over it
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def library(env=os.environ) -> ctypes.CDLL | None:
    """The loaded library, built on first use; None where it cannot be (reason in :data:`status`). A failure is
    kept for the process: later loads do not run the compiler again."""
    global _lib, status
    if _lib is not None or status:
        return _lib
    if not sys.platform.startswith("linux"):
        status = f"{sys.platform}: the page watch needs Linux (/proc/self/maps, madvise)"
        return None
    try:
        lib = ctypes.CDLL(str(build(env)))
    except OSError as e:
        status = str(e).splitlines()[0]
        return None
    lib.sdp_watch_start.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    lib.sdp_watch_start.restype = ctypes.c_int
    lib.sdp_watch_stop.argtypes = [ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.c_ulonglong),
                                   ctypes.POINTER(ctypes.c_int)]
    lib.sdp_watch_stop.restype = ctypes.c_ulonglong
    _lib, status = lib, ""
    return lib


def interval_ms(env=os.environ) -> int | None:
    """The watch interval from ``SDPHONE_PAGE_WATCH`` (None: off). Raises HarnessError naming the variable."""
    raw = env.get(WATCH_ENV, "").strip()
    if raw == "":
        return DEFAULT_INTERVAL_MS
    if raw.lower() == "off":
        return None
    try:
        ms = int(raw)
    except ValueError:
        ms = 0
    if ms <= 0:
        raise HarnessError(f"{WATCH_ENV}={raw!r}: expected 'off' or an interval in milliseconds (> 0)")
    return ms


def fill_wanted(env=os.environ) -> bool:
    """Whether loads run the filler (``SDPHONE_LOAD_FILL``: on unless "off"). Raises HarnessError naming the
    variable for anything else."""
    raw = env.get(FILL_ENV, "").strip().lower()
    if raw not in ("", "on", "off"):
        raise HarnessError(f"{FILL_ENV}={env[FILL_ENV]!r}: expected 'on' or 'off'")
    return raw != "off"


@contextlib.contextmanager
def watch_file_pages(path: str, env=os.environ):
    """While the body runs, a native thread drops this process's resident pages of every read-only mapping of
    ``path`` every few milliseconds (``madvise(MADV_DONTNEED)``: the data stays in the file and the page cache,
    and a page read again is faulted back in), and another faults in every private anonymous range mapped
    after the body started, from its top down (``madvise(MADV_POPULATE_WRITE)``: contents untouched), while
    the body's own thread writes it from the bottom up. Yields a :class:`WatchResult`, filled in when the body
    ends.

    Only for a call whose mappings of ``path`` are read-only and stay mapped while it runs (LiteRT maps the
    model file once, read-only, for the model's lifetime: a range advised just after it had been unmapped and
    reused by an anonymous mapping would lose that mapping's data), and whose new anonymous memory is written
    in full (XNNPACK's packed weights and workspace are: the filler only faults in earlier what the call
    touches anyway, so it moves no memory peak)."""
    ms = interval_ms(env)
    fill = fill_wanted(env)
    result = WatchResult(skipped=f"{WATCH_ENV}=off" if ms is None else "",
                         fill_skipped="" if fill else f"{FILL_ENV}=off")
    lib = library(env) if ms is not None or fill else None
    # one watch per process (the library's state is static): a second concurrent watch is refused (EBUSY)
    rc = lib.sdp_watch_start(os.path.realpath(path).encode() if ms is not None else None, ms or DEFAULT_INTERVAL_MS,
                             int(fill)) if lib is not None else 0
    if lib is None or rc != 0:
        why = status if lib is None else f"the watch did not start ({os.strerror(rc)})"
        result.skipped = result.skipped or why
        result.fill_skipped = result.fill_skipped or why
        yield result
        return
    passes, filled, fill_error = ctypes.c_ulong(), ctypes.c_ulonglong(), ctypes.c_int()
    try:
        yield result
    finally:
        result.advised_bytes = int(lib.sdp_watch_stop(ctypes.byref(passes), ctypes.byref(filled),
                                                      ctypes.byref(fill_error)))
        result.passes = int(passes.value)
        result.filled_bytes = int(filled.value)
        if fill_error.value:
            why = os.strerror(fill_error.value)
            result.fill_skipped = f"madvise(MADV_POPULATE_WRITE): {why} (Linux >= 5.14 has it)"
