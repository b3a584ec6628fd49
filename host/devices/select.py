"""Choosing the device a run goes to: ``select_device("s23")``, a serial / UDID, ``"s23@<serial>"``, or "host".

* a **profile name** picks the attached device that profile matches (Android: ``ro.product.model`` against
  the profile's ``model_patterns``; iOS: ``ProductType`` against ``product_types``); several matches or none
  are errors that list what is attached and how to attach;
* a **serial / UDID** (or an adb ``host:port`` endpoint, which is ``adb connect``-ed first) selects that device,
  and the one profile matching its model;
* ``profile@serial`` uses that device with that profile, whatever its model says;
* nothing given: ``$SDPHONE_DEVICE``, else ``host``. Never prompts.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any, Mapping

from host.devices.base import Device
from host.devices.errors import DeviceError, DeviceNotFound, Unauthorized
from host.profiles import DeviceProfile, list_profiles, load_profile, match_android, match_ios

DEVICE_ENV = "SDPHONE_DEVICE"


class AmbiguousDevice(DeviceError):
    """Several attached devices match; the message lists them and how to pick one."""


@dataclass(frozen=True)
class Attached:
    platform: str          # "android" | "ios"
    serial: str            # adb serial or UDID
    state: str             # adb state ("device", "unauthorized", ...) or iOS "paired" / "not paired" / error
    model: str             # ro.product.model / ProductType ("" when unknown)
    profiles: tuple[str, ...] = ()

    def line(self) -> str:
        what = f"{self.model or '?'}, {self.state}"
        to = f" -> {', '.join(self.profiles)}" if self.profiles else ""
        return f"{self.platform} {self.serial} ({what}){to}"


def _summary(found: list[Attached], notes: list[str]) -> str:
    parts = [a.line() for a in found] or ["none"]
    s = "attached: " + "; ".join(parts)
    return s + (f" ({'; '.join(notes)})" if notes else "")


# ------------------------------------------------------------------------------------------ listing


def _android(env: Mapping[str, str], adb, endpoints: list[str]) -> tuple[Any, list[Attached], list[str]]:
    from host.devices.android import connect_endpoint, ensure_server, list_android

    client = adb
    if client is None:
        from host.devices.android import adb_client

        client = adb_client(env)
    note = ensure_server(client, env)
    if note:
        return client, [], [note]
    for ep in endpoints:
        connect_endpoint(client, ep)
    try:
        entries = list_android(client)
    except Exception as e:  # noqa: BLE001
        return client, [], [f"adb: cannot list devices ({type(e).__name__}: {e})"]
    return client, [Attached("android", e.serial, e.state, e.model,
                             tuple(p.name for p in match_android(e.model)) if e.model else ())
                    for e in entries], []


def _ios(backend) -> tuple[Any, list[Attached], list[str]]:
    if backend is None:
        import importlib.util

        if importlib.util.find_spec("pymobiledevice3") is None:
            return None, [], ["iOS devices not listed: pymobiledevice3 is not installed"]
        from host.devices.ios import Pmd3

        backend = Pmd3()

    async def go() -> tuple[list[Attached], list[str]]:
        try:
            devs = await backend.list_devices()
        except Exception as e:  # noqa: BLE001  (no usbmuxd: no iOS devices)
            return [], [f"usbmuxd not reachable ({type(e).__name__}); on Linux start it with "
                        "`sudo systemctl start usbmuxd`"]
        out = []
        seen = set()
        for udid, conn in devs:
            if udid in seen:
                continue
            seen.add(udid)
            try:
                ld = await backend.lockdown(udid)
                try:
                    product = str(await ld.get_value(key="ProductType") or "")
                    state = "paired" if getattr(ld, "paired", False) else "not paired"
                finally:
                    try:
                        await ld.close()
                    except Exception:  # noqa: BLE001
                        pass
            except Exception as e:  # noqa: BLE001
                product, state = "", f"unreachable: {type(e).__name__}"
            out.append(Attached("ios", udid, f"{state}, {conn}", product,
                                tuple(p.name for p in match_ios(product)) if product else ()))
        return out, []

    loop = asyncio.new_event_loop()
    try:
        found, notes = loop.run_until_complete(go())
    finally:
        loop.close()
    return backend, found, notes


def list_attached(env: Mapping[str, str] = os.environ, *, adb=None, ios_backend=None,
                  platforms: tuple[str, ...] = ("android", "ios")) -> tuple[list[Attached], list[str]]:
    """Every attached phone (with the profiles it matches), and notes on what could not be asked."""
    found, notes = [], []
    if "android" in platforms:
        _, f, n = _android(env, adb, [e for e in env.get("SDPHONE_ADB_CONNECT", "").split(",") if e])
        found += f
        notes += n
    if "ios" in platforms:
        _, f, n = _ios(ios_backend)
        found += f
        notes += n
    return found, notes


# ------------------------------------------------------------------------------------------ selection


def _is_profile(s: str) -> bool:
    return s.endswith(".toml") or s in list_profiles()


def select_device(name_or_serial: str | None = None, env: Mapping[str, str] = os.environ, *, adb=None,
                  ios_backend=None, options: Mapping[str, Any] | None = None) -> Device:
    """The :class:`Device` for a profile name, serial / UDID, ``profile@serial`` or ``host`` (see module doc).

    ``adb`` (an ``adbutils.AdbClient``) and ``ios_backend`` (a :class:`host.devices.ios.Pmd3`) replace the
    defaults (tests); ``options`` are passed to the device's constructor (poll intervals, apk / ipa, ...)."""
    from host.devices.android import ADB_CONNECT_ENV, ATTACH_HINT as ANDROID_ATTACH, ENDPOINT_RE, state_error
    from host.devices.host import HostDevice
    from host.devices.ios import ATTACH_HINT as IOS_ATTACH

    raw = (name_or_serial or env.get(DEVICE_ENV) or "host").strip()
    options = dict(options or {})
    if "@" in raw:
        profile_name, serial = raw.split("@", 1)
        if not profile_name or not serial:
            raise DeviceNotFound("expected <profile>@<serial>", device=raw)
    elif _is_profile(raw):
        profile_name, serial = raw, None
    else:
        profile_name, serial = None, raw
    profile: DeviceProfile | None = load_profile(profile_name) if profile_name else None
    if profile is not None and profile.platform == "host":
        if serial:
            raise DeviceNotFound("the host profile takes no serial", device=raw)
        return HostDevice(profile)

    endpoints = [e.strip() for e in env.get(ADB_CONNECT_ENV, "").split(",") if e.strip()]
    if serial and ENDPOINT_RE.fullmatch(serial) and serial not in endpoints:
        endpoints.append(serial)
    platforms = (profile.platform,) if profile else ("android", "ios")
    found: list[Attached] = []
    notes: list[str] = []
    client = backend = None
    if "android" in platforms:
        client, f, n = _android(env, adb, endpoints)
        found += f
        notes += n
    if "ios" in platforms and not (serial and any(a.serial == serial for a in found)):
        backend, f, n = _ios(ios_backend)
        found += f
        notes += n

    def make(a: Attached, p: DeviceProfile) -> Device:
        if a.platform == "android":
            if a.state != "device":
                raise state_error(a.serial, a.state, f"{p.name} {a.serial}")
            from host.devices.android import AndroidDevice
            from host.devices.contract import load_android_contract

            return AndroidDevice(client, a.serial, p, load_android_contract(env=env), model=a.model, env=env,
                                 **options)
        if not a.state.startswith("paired"):
            from host.devices.ios import PAIR_HINT

            raise Unauthorized(PAIR_HINT if a.state.startswith("not paired") else f"cannot be reached ({a.state})",
                               device=f"{p.name} {a.serial}")
        from host.devices.contract import load_ios_contract
        from host.devices.ios import IosDevice

        return IosDevice(a.serial, p, load_ios_contract(env=env), backend=backend, product_type=a.model, env=env,
                         **options)

    hints = "; ".join(h for plat, h in (("android", ANDROID_ATTACH), ("ios", IOS_ATTACH)) if plat in platforms)
    if serial:
        hits = [a for a in found if a.serial == serial or (a.platform == "ios" and
                                                             a.serial.replace("-", "") == serial.replace("-", ""))]
        if not hits:
            what = f"profile {profile.name}: " if profile else ""
            raise DeviceNotFound(f"{what}no attached device has serial/UDID {serial!r}"
                                 + ("" if profile else
                                    f" and it is not a device profile ({', '.join(list_profiles())})")
                                 + f"; {_summary(found, notes)}; {hints}", device=raw)
        a = hits[0]
        if profile is None:
            if not a.model:
                if a.platform == "android" and a.state != "device":
                    raise state_error(a.serial, a.state)
                raise DeviceNotFound(f"cannot read its model ({a.state}); name a profile: --device <profile>@{serial}",
                                     device=serial)
            matches = match_android(a.model) if a.platform == "android" else match_ios(a.model)
            if not matches:
                key = "model_patterns" if a.platform == "android" else "product_types"
                raise DeviceNotFound(f"{a.model!r} matches no device profile; add one to device_profiles/ with "
                                     f"{key} matching it, or name one: --device <profile>@{serial}", device=serial)
            if len(matches) > 1:
                raise AmbiguousDevice(f"{a.model!r} matches several profiles ({', '.join(p.name for p in matches)}); "
                                      f"name one: --device <profile>@{serial}", device=serial)
            profile = matches[0]
        return make(a, profile)

    assert profile is not None
    hits = [a for a in found if a.platform == profile.platform and profile.name in a.profiles]
    if len(hits) > 1:
        raise AmbiguousDevice(f"several attached devices match profile {profile.name}: "
                              + "; ".join(a.line() for a in hits)
                              + f"; pick one with --device {profile.name}@<serial> (or {DEVICE_ENV})",
                              device=profile.name)
    if hits:
        return make(hits[0], profile)
    rule = (f"ro.product.model ~ {' | '.join(profile.match.model_patterns)}" if profile.platform == "android"
            else f"ProductType in {', '.join(profile.match.product_types)}")
    blocked = [a for a in found if a.platform == profile.platform and
               (a.state in ("unauthorized", "offline") or a.state.startswith("not paired"))]
    if blocked:
        from host.devices.android import UNAUTHORIZED_HINT
        from host.devices.ios import PAIR_HINT

        a = blocked[0]
        hint = UNAUTHORIZED_HINT if a.platform == "android" else PAIR_HINT
        raise Unauthorized(f"no authorised device matches profile {profile.name} ({rule}); {a.serial} is {hint}; "
                           f"{_summary(found, notes)}", device=profile.name)
    raise DeviceNotFound(f"no attached {profile.platform} device matches profile {profile.name} ({rule}); "
                         f"{_summary(found, notes)}; {hints}", device=profile.name)
