"""Opening a self-contained HTML page in a real headless Chromium (Debian's package; scripts/setup.sh installs it)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium() -> str | None:
    for c in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if c and os.path.exists(c):
            return c
    return None


def rendered_dom(page: Path, profile_dir: Path) -> tuple[str, str]:
    """(the DOM after the page's scripts ran, Chromium's stderr); asserts the page set ``data-ok="1"`` on
    its body and no error marker (set by window.onerror or the page script's catch)."""
    exe = chromium()
    if exe is None:
        if os.environ.get("SDPHONE_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed but SDPHONE_REQUIRE_BROWSER is set (CI)")
        pytest.skip("chromium is not installed (scripts/setup.sh installs it when run as root)")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile_dir}", "--enable-logging=stderr", "--v=0",
           "--dump-dom", Path(page).resolve().as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dom = p.stdout
    assert p.returncode == 0, p.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    assert 'data-ok="1"' in body.group(0), body.group(0)
    html_tag = re.search(r"<html[^>]*>", dom).group(0)
    assert "data-error" not in body.group(0) + html_tag, body.group(0) + html_tag
    assert "Uncaught" not in p.stderr
    return dom, p.stderr
