"""Device errors: one family under :class:`host.errors.HarnessError`, so every CLI prints them as one line.

``str(e)`` is ``"<device>: <what happened> [<command>] | last log: <a few log lines>"`` (the parts in
brackets only where known). The full detail stays on the exception: ``e.device``, ``e.command``,
``e.log_lines`` (the last lines of the app's log / trace, oldest first).
"""
from __future__ import annotations

from typing import Iterable, Sequence

from host.errors import HarnessError

#: how many log lines ``str()`` shows (all of them are kept in ``log_lines``)
SHOWN_LOG_LINES = 3
_MAX_LINE = 160


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


class DeviceError(HarnessError):
    """A device or transport failure; names the device and, where there was one, the command."""

    def __init__(self, message: str, *, device: str | None = None, command: str | Sequence[str] | None = None,
                 log_lines: Iterable[str] = ()) -> None:
        self.message = _one_line(message)
        self.device = device
        if command is not None and not isinstance(command, str):
            command = " ".join(str(c) for c in command)
        self.command = command
        self.log_lines = [str(line).rstrip("\r\n") for line in log_lines]
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.device}: {self.message}" if self.device else self.message
        if self.command:
            text += f" [{_one_line(self.command)[:200]}]"
        shown = [_one_line(line)[:_MAX_LINE] for line in self.log_lines if line.strip()][-SHOWN_LOG_LINES:]
        if shown:
            text += " | last log: " + " / ".join(shown)
        return text


class DeviceNotFound(DeviceError):
    """No attached device matches the request (the message lists what is attached and how to attach)."""


class Unauthorized(DeviceError):
    """The device is attached but the host may not talk to it (adb RSA prompt, iOS trust / pairing)."""


class StorageFull(DeviceError):
    """Not enough free storage on the device for the files to push."""


class AppCrashed(DeviceError):
    """The runner app died without writing a final status; ``log_lines`` holds its last log lines."""


class LowMemoryKilled(AppCrashed):
    """The runner app was killed by the system for memory (Android lowmemorykiller / am_kill, iOS jetsam)."""


class RunTimeout(DeviceError):
    """The run did not finish within the timeout."""


class Disconnected(DeviceError):
    """The device went away (USB unplugged, adb connection lost) while we were using it."""


class RunFailed(DeviceError):
    """The runner finished with ``status.json`` state ``error``; the message is the runner's."""


class SetupError(DeviceError):
    """The device is reachable but not ready: app missing or too old, Developer Mode off, no disk image."""


class ContractError(DeviceError):
    """``android_app/host_contract.json`` or ``ios_app/host_contract.json`` is missing or invalid."""
