"""The native page watch (host/native): built from source, run beside a call that holds the interpreter lock."""
from __future__ import annotations

import mmap
import time

import pytest

import host.native
from host.errors import HarnessError
from host.native import FILL_ENV, WATCH_ENV, watch_file_pages
from tests.host.mappings import mapped_rss, private_anonymous, resident_bytes, two_mappings

PROT_NONE = 0  # not in Python's mmap module




def test_the_watch_drops_a_read_only_mapping_while_the_body_runs_and_spares_a_private_one(tmp_path):
    with two_mappings(tmp_path, 16 << 20) as m:
        total = m.read_sum()
        assert total == int(m.data.sum()) and mapped_rss(m.ro) >= 16 << 20
        with watch_file_pages(str(m.ro)) as w:
            time.sleep(0.3)  # releases the interpreter lock, as a native load would not: the thread runs either way
            during = mapped_rss(m.ro)
        assert w.skipped == "" and w.passes >= 2 and w.advised_bytes >= 2 * (16 << 20), w
        assert during < (1 << 20)
        with watch_file_pages(str(m.rw)) as v:
            time.sleep(0.1)
        assert v.passes >= 1 and v.advised_bytes == 0 and m.edited[:4] == b"edit"
        assert m.read_sum() == total  # faulted back in from the file


def test_only_one_watch_runs_at_a_time(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"\0" * 4096)
    with watch_file_pages(str(f)) as outer, watch_file_pages(str(f)) as inner:
        pass
    assert outer.skipped == "" and "did not start" in inner.skipped


def test_without_a_compiler_the_watch_is_skipped_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(host.native, "_lib", None)
    monkeypatch.setattr(host.native, "status", "")
    env = {"CC": str(tmp_path / "no-such-cc"), host.native.CACHE_ENV: str(tmp_path / "native")}
    with watch_file_pages(str(tmp_path), env=env) as w:
        pass
    assert w.passes == 0 and w.skipped.startswith(f"{tmp_path / 'no-such-cc'}: cannot run the C compiler"), w
    (tmp_path / "native").mkdir(exist_ok=True)
    (tmp_path / "no-such-cc").write_text("#!/bin/sh\ntouch \"$(dirname \"$0\")/ran\"\nexit 1\n")
    (tmp_path / "no-such-cc").chmod(0o755)
    with watch_file_pages(str(tmp_path), env=env) as again:
        pass
    assert again.skipped == w.skipped and not (tmp_path / "ran").exists()  # the failure is kept, not retried
    assert not (tmp_path / "native").exists() or not any((tmp_path / "native").iterdir())


def test_a_source_the_compiler_rejects_leaves_no_library(tmp_path, monkeypatch):
    bad = tmp_path / "page_release.c"
    bad.write_text("this is not C\n")
    monkeypatch.setattr(host.native, "SOURCE", bad)
    with pytest.raises(OSError, match=r"compiling page_release.c failed"):
        host.native.build({host.native.CACHE_ENV: str(tmp_path / "native")})
    assert not any((tmp_path / "native").iterdir())


def test_the_watch_can_be_turned_off_and_a_bad_setting_is_named(tmp_path):
    with watch_file_pages(str(tmp_path), env={WATCH_ENV: "off"}) as w:
        pass
    assert w.skipped == f"{WATCH_ENV}=off" and w.passes == 0
    with pytest.raises(HarnessError, match=rf"^{WATCH_ENV}='soon': expected 'off' or an interval"):
        with watch_file_pages(str(tmp_path), env={WATCH_ENV: "soon"}):
            pass


def _mprotect(address: int, size: int, prot: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(address, size, prot) == 0, ctypes.get_errno()


def _stack_size() -> int:
    import resource

    limit = resource.getrlimit(resource.RLIMIT_STACK)[0]
    return 32 << 20 if limit == resource.RLIM_INFINITY or limit > 32 << 20 else limit


def _stack():
    """A mapping made as glibc makes a thread's stack: RLIMIT_STACK bytes mapped inaccessible, then all but the
    lowest page (its guard) made writable; returns it and the address of its writable part."""
    m, at = private_anonymous(_stack_size(), prot=PROT_NONE)
    _mprotect(at + 4096, _stack_size() - 4096, mmap.PROT_READ | mmap.PROT_WRITE)
    return m, at + 4096


def _arena(used: int):
    """A mapping made as glibc makes a malloc arena: 64 MiB mapped inaccessible, then the ``used`` bytes at its
    bottom made writable; returns it and its address."""
    m, at = private_anonymous(64 << 20, prot=PROT_NONE)
    _mprotect(at, used, mmap.PROT_READ | mmap.PROT_WRITE)
    return m, at


def test_the_filler_faults_in_what_the_body_maps_and_nothing_it_had_before(tmp_path):
    size = 32 << 20
    old, old_at = private_anonymous(size)
    with watch_file_pages(str(tmp_path / "no-such-file")) as w:
        stack, stack_at = _stack()
        arena, arena_at = _arena(16 << 20)
        new, new_at = private_anonymous(size)  # may be placed beside (and merged with) the stack or the arena
        new[:4] = b"mine"  # the body writes at the bottom, as XNNPACK packs; the filler comes from the top
        small, small_at = private_anonymous(1 << 20)
        deadline = time.monotonic() + 10
        while resident_bytes(new_at, size) < size and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # another pass, in which the others would be faulted in if they were taken
    try:
        assert w.fill_skipped == "" and w.filled_bytes >= size - 4096, w
        assert new[:4] == b"mine" and not any(new[4:])  # contents untouched
        assert resident_bytes(new_at, size) == size
        assert resident_bytes(old_at, size) == 0  # mapped before the body: not the body's to fill
        assert resident_bytes(small_at, 1 << 20) == 0  # under 4 MiB: left to the body
        # a stack and an arena are not filled, alone or merged with the new buffer into one mapping
        assert resident_bytes(stack_at, 4096) == 0 and resident_bytes(arena_at, 4096) == 0
    finally:
        for m in (old, new, stack, arena, small):
            m.close()


def test_a_buffer_merged_with_a_stack_below_and_an_arena_above_is_filled_alone(tmp_path):
    stack, size, used = _stack_size(), 32 << 20, 16 << 20
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    with watch_file_pages(str(tmp_path / "no-such-file")) as w:
        # one mapping, which the kernel keeps as one writable range: guard page, stack, buffer, an arena's used part,
        # then its reserve; made inaccessible first, as glibc makes stacks and arenas
        m, at = private_anonymous(stack + size + (64 << 20), prot=PROT_NONE)
        _mprotect(at + 4096, stack - 4096 + size + used, rw)
        deadline = time.monotonic() + 10
        while resident_bytes(at + stack, size) < size and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
    try:
        assert resident_bytes(at + stack, size) == size, w
        assert resident_bytes(at + 4096, stack - 4096) == 0 and resident_bytes(at + stack + size, used) == 0
    finally:
        m.close()


def test_the_filler_can_be_turned_off_and_a_bad_setting_is_named(tmp_path):
    size = 16 << 20
    with watch_file_pages(str(tmp_path), env={FILL_ENV: "off"}) as w:
        new, new_at = private_anonymous(size)
        time.sleep(0.2)
    try:
        assert w.fill_skipped == f"{FILL_ENV}=off" and w.filled_bytes == 0 and w.skipped == "" and w.passes >= 1
        assert resident_bytes(new_at, size) == 0
    finally:
        new.close()
    with watch_file_pages(str(tmp_path), env={WATCH_ENV: "off", FILL_ENV: "off"}) as both:
        pass
    assert both.skipped == f"{WATCH_ENV}=off" and both.fill_skipped == f"{FILL_ENV}=off"
    with pytest.raises(HarnessError, match=rf"^{FILL_ENV}='later': expected 'on' or 'off'"):
        with watch_file_pages(str(tmp_path), env={FILL_ENV: "later"}):
            pass
