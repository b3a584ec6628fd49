"""The native page watch (host/native): built from source, run beside a call that holds the interpreter lock."""
from __future__ import annotations

import time

import pytest

import host.native
from host.errors import HarnessError
from host.native import WATCH_ENV, watch_file_pages
from tests.host.mappings import mapped_rss, two_mappings




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
