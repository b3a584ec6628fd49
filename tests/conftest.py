"""Shared fixtures: tiny-config builds, converted once and cached for the whole test session.

The artifact store is content-addressed, so it is shared across test runs too (under pytest's
temporary root); a change to the model code or the tools changes the keys and forces a rebuild.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("SDPHONE_ADB_AUTOSTART", "0")  # tests never start a real adb server
# XNNPACK weight caches of the tiny models: beside pytest's temporary folders, never in the user's cache
os.environ.setdefault("SDPHONE_XNNPACK_CACHE", os.path.join(tempfile.gettempdir(), "sdphone-test-xnnpack-cache"))
# litert-torch's lightweight conversion (host/build/convert.py) hands constants of 1 MiB and more to MLIR as
# resource blobs and folds what depends on them at conversion time; no tiny-config weight is that large, so the
# tiny builds lower the threshold to take the path every full-size weight takes
os.environ.setdefault("RESOURCE_CONSTANT_NUMEL_THRESHOLD", "1024")


def pytest_addoption(parser):
    parser.addoption("--device", action="store", default=None,
                     help="phone for -m device tests: profile name, serial or UDID (default $SDPHONE_DEVICE)")


@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory) -> Path:
    override = os.environ.get("SDPHONE_TEST_ARTIFACTS")
    root = Path(override) if override else tmp_path_factory.getbasetemp().parent / "sdphone-test-artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root


class TinyBuilds:
    """Builds tiny variants on demand: ``tiny_builds.get("optimized", quantization="fp16")``."""

    def __init__(self, root: Path):
        self.root = root
        self._done: dict[tuple, tuple[dict, Path]] = {}

    def get(self, variant: str = "baseline", quantization: str = "fp32", seed: int = 0,
            components: tuple[str, ...] | None = None, **switches):
        from host.build.builder import BuildOptions, build_variant
        from host.build.weights import resolve
        from models.config import COMPONENTS, get_variant

        components = tuple(components or COMPONENTS)
        key = (variant, quantization, seed, components, tuple(sorted(switches.items())))
        if key not in self._done:
            weights = resolve("tiny", None, seed, None, str(self.root / "checkpoint-index.json"))
            manifest, path, _ = build_variant(get_variant(variant, quantization, **switches), weights,
                                              BuildOptions(root=self.root, components=components),
                                              log=lambda s: None)
            self._done[key] = (manifest, path)
        return self._done[key]


@pytest.fixture(scope="session")
def tiny_builds(artifact_root) -> TinyBuilds:
    return TinyBuilds(artifact_root)
