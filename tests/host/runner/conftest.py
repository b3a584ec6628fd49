"""A factory of prepared run folders on the tiny build (3 DPM++ steps at 64x64 unless told otherwise)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from host.request import prepare_run


@pytest.fixture
def make_run(tiny_builds, tmp_path) -> Callable[..., Path]:
    manifest, build_dir = tiny_builds.get("baseline")
    count = iter(range(1000))

    def make(**kw: Any) -> Path:
        run_dir = tmp_path / f"run{next(count)}"
        args: dict[str, Any] = dict(prompt="a lighthouse at dusk", negative_prompt="", seed=7, steps=3,
                                    scheduler="dpmpp_2m", size=64, run_id="test_run",
                                    runtime={"threads": 2, "warmup": 0, "repeats": 1},
                                    profiling={"memory_interval_ms": 5})
        prepare_run(run_dir, manifest, build_dir, **{**args, **kw})
        return run_dir

    return make
