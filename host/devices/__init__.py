"""Devices a run folder executes on: the host, Android phones (adb), iPhones (usbmux). See :mod:`host.devices.base`.

Public API::

    select_device(name_or_serial=None, env=os.environ) -> Device     # never prompts
    list_attached(env=os.environ) -> (list[Attached], notes)
    Device: name, serial, profile, platform, prepare, push_models, start, wait, pull, sample_memory, cleanup
    errors: DeviceError > DeviceNotFound, Unauthorized, StorageFull, AppCrashed > LowMemoryKilled, RunTimeout,
            Disconnected, RunFailed, SetupError, ContractError, AmbiguousDevice
"""
from host.devices.base import Device, PushStats, read_local_run  # noqa: F401
from host.devices.errors import (  # noqa: F401
    AppCrashed, ContractError, DeviceError, DeviceNotFound, Disconnected, LowMemoryKilled, RunFailed, RunTimeout,
    SetupError, StorageFull, Unauthorized,
)
from host.devices.select import DEVICE_ENV, AmbiguousDevice, Attached, list_attached, select_device  # noqa: F401
