"""The host itself as a device: the run folder is executed in place by ``host.runner.run``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from host.devices.base import STATUS_FILE, Device, OnRecord, PushStats
from host.profiles import DeviceProfile


class HostDevice(Device):
    """Runs on this machine. ``prepare`` / ``push_models`` / ``pull`` have nothing to move (the run folder is
    local and ``prepare_run`` already linked the models); ``wait`` runs the Python runner in this process, so
    its ``timeout`` is not enforced, and runner failures propagate as the runner raises them."""

    platform = "host"

    def __init__(self, profile: DeviceProfile) -> None:
        super().__init__(profile, serial="local")
        self._run_dir: Path | None = None

    def describe(self) -> str:
        return f"{self.name} (this machine)"

    def prepare(self, run_dir_local: str | os.PathLike) -> str:
        self._run_dir = Path(run_dir_local)
        return str(self._run_dir)

    def push_models(self, run_dir_local: str | os.PathLike,
                    progress: Callable[[str, int], None] | None = None) -> PushStats:
        self.last_push = PushStats()
        return self.last_push

    def start(self, run_dir_local: str | os.PathLike) -> None:
        self._run_dir = Path(run_dir_local)

    def wait(self, timeout: float | None, on_record: OnRecord | None = None) -> dict[str, Any]:
        import host.runner  # looked up at call time: tests replace host.runner.run

        if self._run_dir is None:
            raise RuntimeError("HostDevice.wait before start")
        host.runner.run(self._run_dir, on_record=on_record)
        try:
            return json.loads((self._run_dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return {"state": "ok"}

    def pull(self, run_dir_local: str | os.PathLike) -> list[str]:
        return []

    def sample_memory(self) -> dict[str, Any] | None:
        return None  # the host runner records its own (source "proc_status")

    def cleanup(self) -> None:
        self._run_dir = None
