"""Device profiles: one TOML file per device class in ``device_profiles/`` (``<name>.toml``).

A profile says what a device class is (how to recognise it), what it has, how we run on it by default,
the roofline numbers we compare traced layers against, and published end-to-end figures to compare
whole runs against. Every number carries a ``source``; the host's roofline is measured, never typed
(``python -m host.hostperf --write device_profiles/host.toml``).

Schema (every key is required unless marked optional; unknown sections and keys are errors)::

    [device]
    name = "s23"                  # str, must equal the file name without .toml
    platform = "android"          # "host" | "android" | "ios"
    description = "..."           # str

    [match]                       # how a connected device is recognised
    model_patterns = ["SM-S911[0-9A-Z]*"]   # android only: regexes, each must re.fullmatch the whole
                                             #   ro.product.model (so "Pixel 8" does not match "Pixel 8 Pro")
    product_types = ["iPhone15,3"]           # ios only: exact hw.machine / utsname identifiers
                                             # host: no [match] section (or an empty one)

    [hardware]
    soc = "..."                   # str
    gpu = "..."                   # str ("none" where there is none)
    ram_bytes = 8589934592        # int > 0 (nominal, as marketed: 8 GB = 8 * 2**30)
    cpu_cores = 8                 # int > 0

    [runtime]                     # the default way this harness runs on the device
    accelerator = "gpu"           # "cpu" | "gpu" | "npu"
    precision = "fp16"            # "fp32" | "fp16"
    threads = 4                   # int > 0 (CPU threads for the interpreter)
    optimized = "cpu"             # optional: the variant host.deploy runs beside the baseline by default
                                  #   (a models.config LADDER name; default "optimized", the paper's GPU set)

    [roofline]                    # for the default accelerator + precision
    peak_flops = 4.0e12           # FLOP/s, number > 0
    mem_bandwidth_bytes_per_s = 6.4e10   # bytes/s, number > 0
    source = "..."                # where both numbers come from (measurement + date + command, or a named spec)

    [[reference]]                 # optional, repeatable: published end-to-end figures
    label = "..."                 # the conditions, stated exactly (model, resolution, steps, precision, unit)
    value_s = 12.0                # seconds, number > 0
    what = "..."                  # what the number is (e.g. "upper bound stated in the abstract")
    source = "..."                # the publication

Validation errors are :class:`ProfileError` with one line naming the file and the dotted key
(``device_profiles/s23.toml: roofline.peak_flops: must be > 0, got -1``).
"""
from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host.errors import HarnessError

PLATFORMS = ("host", "android", "ios")
ACCELERATORS = ("cpu", "gpu", "npu")
PRECISIONS = ("fp32", "fp16")
SECTIONS = ("device", "match", "hardware", "runtime", "roofline", "reference")
PROFILES_ENV = "SDPHONE_PROFILES"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PRODUCT_TYPE_RE = re.compile(r"[A-Za-z]+[0-9]+,[0-9]+")


class ProfileError(HarnessError):
    """A device profile is missing, unreadable or invalid; ``str()`` is one line naming file and key."""


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    platform: str
    description: str


@dataclass(frozen=True)
class MatchRules:
    model_patterns: tuple[str, ...] = ()
    product_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hardware:
    soc: str
    gpu: str
    ram_bytes: int
    cpu_cores: int


@dataclass(frozen=True)
class Runtime:
    accelerator: str
    precision: str
    threads: int
    optimized: str = "optimized"


@dataclass(frozen=True)
class Roofline:
    peak_flops: float
    mem_bandwidth_bytes_per_s: float
    source: str

    @property
    def ridge_flops_per_byte(self) -> float:
        """Arithmetic intensity where the roofline turns from memory- to compute-bound."""
        return self.peak_flops / self.mem_bandwidth_bytes_per_s

    def attainable_flops(self, flops_per_byte: float) -> float:
        return min(self.peak_flops, flops_per_byte * self.mem_bandwidth_bytes_per_s)


@dataclass(frozen=True)
class Reference:
    label: str
    value_s: float
    what: str
    source: str


@dataclass(frozen=True)
class DeviceProfile:
    device: DeviceInfo
    match: MatchRules
    hardware: Hardware
    runtime: Runtime
    roofline: Roofline
    references: tuple[Reference, ...] = ()
    path: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def platform(self) -> str:
        return self.device.platform

    def matches_android(self, model: str) -> bool:
        model = model.strip()
        return self.platform == "android" and any(re.fullmatch(p, model) for p in self.match.model_patterns)

    def matches_ios(self, product_type: str) -> bool:
        return self.platform == "ios" and product_type.strip() in self.match.product_types

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain TOML-able data, in file order (``dumps_toml(p.to_dict())`` loads back equal)."""
        d: dict[str, Any] = {"device": {"name": self.device.name, "platform": self.device.platform,
                                        "description": self.device.description}}
        match: dict[str, Any] = {}
        if self.match.model_patterns:
            match["model_patterns"] = list(self.match.model_patterns)
        if self.match.product_types:
            match["product_types"] = list(self.match.product_types)
        if match:
            d["match"] = match
        d["hardware"] = {"soc": self.hardware.soc, "gpu": self.hardware.gpu,
                         "ram_bytes": self.hardware.ram_bytes, "cpu_cores": self.hardware.cpu_cores}
        d["runtime"] = {"accelerator": self.runtime.accelerator, "precision": self.runtime.precision,
                        "threads": self.runtime.threads}
        if self.runtime.optimized != "optimized":
            d["runtime"]["optimized"] = self.runtime.optimized
        d["roofline"] = {"peak_flops": self.roofline.peak_flops,
                         "mem_bandwidth_bytes_per_s": self.roofline.mem_bandwidth_bytes_per_s,
                         "source": self.roofline.source}
        if self.references:
            d["reference"] = [{"label": r.label, "value_s": r.value_s, "what": r.what, "source": r.source}
                              for r in self.references]
        return d


# ------------------------------------------------------------------------------------------ locations


def profiles_dir() -> Path:
    """``$SDPHONE_PROFILES`` if set, else the repository's ``device_profiles/``."""
    override = os.environ.get(PROFILES_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "device_profiles"


def list_profiles() -> list[str]:
    """Names of the profiles in :func:`profiles_dir` (file names without ``.toml``), sorted."""
    d = profiles_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.toml") if p.is_file())


def _resolve(name_or_path: str | os.PathLike) -> Path:
    s = os.fspath(name_or_path)
    if s.endswith(".toml") or os.sep in s or (os.altsep and os.altsep in s):
        p = Path(s)
        if not p.is_file():
            raise ProfileError(f"{s}: profile file not found")
        return p
    if not _NAME_RE.fullmatch(s):
        raise ProfileError(f"{s!r}: not a profile name or a .toml path")
    p = profiles_dir() / f"{s}.toml"
    if not p.is_file():
        available = ", ".join(list_profiles()) or "none"
        raise ProfileError(f"unknown device profile {s!r} (available in {profiles_dir()}: {available})")
    return p


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """A profile by name (``"s23"``, looked up in :func:`profiles_dir`) or by path to a ``.toml`` file."""
    path = _resolve(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: not valid TOML ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot read ({e})") from None
    return profile_from_dict(data, path)


def all_profiles() -> list[DeviceProfile]:
    return [load_profile(profiles_dir() / f"{n}.toml") for n in list_profiles()]


def match_android(model: str) -> list[DeviceProfile]:
    """Profiles whose ``model_patterns`` fully match ``ro.product.model`` (surrounding whitespace ignored)."""
    return [p for p in all_profiles() if p.matches_android(model)]


def match_ios(product_type: str) -> list[DeviceProfile]:
    """Profiles listing this product type (``"iPhone15,3"``) exactly."""
    return [p for p in all_profiles() if p.matches_ios(product_type)]


# ----------------------------------------------------------------------------------------- validation


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, msg: str) -> ProfileError:
        return ProfileError(f"{self.path}: {key}: {msg}")

    def table(self, data: dict, section: str, allowed: tuple[str, ...], required: bool = True) -> dict:
        t = data.get(section)
        if t is None:
            if required:
                raise ProfileError(f"{self.path}: [{section}]: missing section")
            return {}
        if not isinstance(t, dict):
            raise self.fail(section, f"expected a table [{section}], got {_type_name(t)}")
        self.no_unknown(t, section, allowed)
        return t

    def no_unknown(self, t: dict, prefix: str, allowed: tuple[str, ...]) -> None:
        for k in t:
            if k not in allowed:
                raise self.fail(f"{prefix}.{k}", f"unknown key (allowed: {', '.join(allowed)})")

    def get(self, t: dict, prefix: str, key: str) -> Any:
        if key not in t:
            raise self.fail(f"{prefix}.{key}", "missing")
        return t[key]

    def string(self, t: dict, prefix: str, key: str, choices: tuple[str, ...] | None = None) -> str:
        v = self.get(t, prefix, key)
        if not isinstance(v, str):
            raise self.fail(f"{prefix}.{key}", f"expected a string, got {_type_name(v)} {v!r}")
        if not v.strip():
            raise self.fail(f"{prefix}.{key}", "must not be empty")
        if choices is not None and v not in choices:
            raise self.fail(f"{prefix}.{key}", f"unknown value {v!r} (expected one of: {', '.join(choices)})")
        return v

    def integer(self, t: dict, prefix: str, key: str) -> int:
        v = self.get(t, prefix, key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(f"{prefix}.{key}", f"expected an integer, got {_type_name(v)} {v!r}")
        if v <= 0:
            raise self.fail(f"{prefix}.{key}", f"must be > 0, got {v}")
        return v

    def number(self, t: dict, prefix: str, key: str) -> float:
        v = self.get(t, prefix, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(f"{prefix}.{key}", f"expected a number, got {_type_name(v)} {v!r}")
        if not math.isfinite(v):
            raise self.fail(f"{prefix}.{key}", f"must be finite, got {v}")
        if v <= 0:
            raise self.fail(f"{prefix}.{key}", f"must be > 0, got {v}")
        return float(v)

    def strings(self, t: dict, prefix: str, key: str) -> tuple[str, ...]:
        v = self.get(t, prefix, key)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(f"{prefix}.{key}", f"expected a list of strings, got {v!r}")
        if not v:
            raise self.fail(f"{prefix}.{key}", "must not be empty")
        return tuple(v)


def _type_name(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(v), type(v).__name__)


def profile_from_dict(data: dict, path: str | os.PathLike = "<profile>") -> DeviceProfile:
    """Validate parsed TOML data and build the profile; errors name ``path`` and the offending key."""
    path = Path(path)
    c = _Checker(path)
    for section in data:
        if section not in SECTIONS:
            raise ProfileError(f"{path}: unknown section [{section}] (expected: {', '.join(SECTIONS)})")

    t = c.table(data, "device", ("name", "platform", "description"))
    device = DeviceInfo(name=c.string(t, "device", "name"),
                        platform=c.string(t, "device", "platform", PLATFORMS),
                        description=c.string(t, "device", "description"))
    if not _NAME_RE.fullmatch(device.name):
        raise c.fail("device.name", f"{device.name!r} is not a valid profile name (letters, digits, _ . -)")
    if path.suffix == ".toml" and device.name != path.stem:
        raise c.fail("device.name", f"{device.name!r} does not match the file name {path.name!r}")

    t = c.table(data, "match", ("model_patterns", "product_types"), required=device.platform != "host")
    if device.platform == "host":
        if t:
            raise c.fail(f"match.{next(iter(t))}", "a host profile matches nothing; leave [match] out")
        match = MatchRules()
    elif device.platform == "android":
        if "product_types" in t:
            raise c.fail("match.product_types", "not allowed for platform 'android' (use model_patterns)")
        patterns = c.strings(t, "match", "model_patterns")
        for i, p in enumerate(patterns):
            try:
                re.compile(p)
            except re.error as e:
                raise c.fail(f"match.model_patterns[{i}]", f"invalid regex {p!r} ({e})") from None
        match = MatchRules(model_patterns=patterns)
    else:
        if "model_patterns" in t:
            raise c.fail("match.model_patterns", "not allowed for platform 'ios' (use product_types)")
        types = c.strings(t, "match", "product_types")
        for i, p in enumerate(types):
            if not _PRODUCT_TYPE_RE.fullmatch(p):
                raise c.fail(f"match.product_types[{i}]", f"{p!r} is not a product type like 'iPhone15,3'")
        match = MatchRules(product_types=types)

    t = c.table(data, "hardware", ("soc", "gpu", "ram_bytes", "cpu_cores"))
    hardware = Hardware(soc=c.string(t, "hardware", "soc"), gpu=c.string(t, "hardware", "gpu"),
                        ram_bytes=c.integer(t, "hardware", "ram_bytes"),
                        cpu_cores=c.integer(t, "hardware", "cpu_cores"))

    t = c.table(data, "runtime", ("accelerator", "precision", "threads", "optimized"))
    from models.config import LADDER

    runtime = Runtime(accelerator=c.string(t, "runtime", "accelerator", ACCELERATORS),
                      precision=c.string(t, "runtime", "precision", PRECISIONS),
                      threads=c.integer(t, "runtime", "threads"),
                      optimized=c.string(t, "runtime", "optimized", tuple(LADDER)) if "optimized" in t else "optimized")
    if device.platform == "host" and runtime.accelerator != "cpu":
        raise c.fail("runtime.accelerator", f"the host runs on the cpu, got {runtime.accelerator!r}")

    t = c.table(data, "roofline", ("peak_flops", "mem_bandwidth_bytes_per_s", "source"))
    roofline = Roofline(peak_flops=c.number(t, "roofline", "peak_flops"),
                        mem_bandwidth_bytes_per_s=c.number(t, "roofline", "mem_bandwidth_bytes_per_s"),
                        source=c.string(t, "roofline", "source"))

    refs = data.get("reference", [])
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise c.fail("reference", "expected an array of tables [[reference]]")
    references = []
    for i, r in enumerate(refs):
        prefix = f"reference[{i}]"
        c.no_unknown(r, prefix, ("label", "value_s", "what", "source"))
        references.append(Reference(label=c.string(r, prefix, "label"), value_s=c.number(r, prefix, "value_s"),
                                    what=c.string(r, prefix, "what"), source=c.string(r, prefix, "source")))

    return DeviceProfile(device=device, match=match, hardware=hardware, runtime=runtime, roofline=roofline,
                         references=tuple(references), path=str(path))


# --------------------------------------------------------------------------------------------- writer

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _toml_str(k)


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-4):
        for digits in range(0, 17):  # shortest scientific form that reads back exactly
            s = f"{x:.{digits}e}"
            if float(s) == x:
                return s
    r = repr(x)
    return r if ("." in r or "e" in r or "n" in r) else r + ".0"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _toml_float(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as a TOML value")


def _toml_table_body(t: dict) -> list[str]:
    lines = []
    for k, v in t.items():
        if isinstance(v, dict):
            raise TypeError(f"nested table {k!r} is not supported by this writer")
        lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return lines


def dumps_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for profile-shaped data: top-level tables of scalars/arrays, and arrays of tables.

    Top-level scalars are written first, then ``[table]`` sections, then ``[[array]]`` sections, each in
    insertion order. Enough for profiles; not a general TOML writer (no nested tables, no dates)."""
    head, tables, arrays = [], [], []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            head.append(f"{_toml_key(k)} = {_toml_value(v)}")
    blocks = ["\n".join(head)] if head else []
    for k, v in tables:
        blocks.append("\n".join([f"[{_toml_key(k)}]", *_toml_table_body(v)]))
    for k, items in arrays:
        for item in items:
            blocks.append("\n".join([f"[[{_toml_key(k)}]]", *_toml_table_body(item)]))
    return "\n\n".join(blocks) + "\n"


def dumps_profile(profile: DeviceProfile) -> str:
    return dumps_toml(profile.to_dict())


_HEADER_RE = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_-]+)\s*\]\]?\s*(#.*)?$")


def replace_section(text: str, section: str, body: dict[str, Any]) -> str:
    """``text`` with the single ``[section]`` table replaced by ``body``, everything else (comments included)
    kept byte for byte. Comment lines directly above the next header stay with that header. Raises
    ValueError where the section is absent or appears more than once."""
    lines = text.splitlines(keepends=True)
    headers = [(i, m.group(1), m.group(0).lstrip().startswith("[[")) for i, line in enumerate(lines)
               if (m := _HEADER_RE.match(line.rstrip("\r\n")))]
    starts = [i for i, name, is_array in headers if name == section and not is_array]
    if len(starts) != 1:
        raise ValueError(f"expected exactly one [{section}] header, found {len(starts)}")
    start = starts[0]
    end = next((i for i, _, _ in headers if i > start), len(lines))
    if end < len(lines):  # leave the next section's leading comments (and the blank line before them) alone
        while end - 1 > start and lines[end - 1].strip().startswith("#"):
            end -= 1
        while end - 1 > start and not lines[end - 1].strip():
            end -= 1
    new = "\n".join([lines[start].rstrip("\r\n"), *_toml_table_body(body)]) + "\n"
    return "".join(lines[:start]) + new + "".join(lines[end:])


def write_roofline(path: str | os.PathLike, roofline: Roofline) -> DeviceProfile:
    """Replace the ``[roofline]`` table of the profile at ``path``, keeping the rest of the file.

    The new text is validated (and checked to change nothing but the roofline) before it atomically
    replaces the file; where the splice cannot be done cleanly the whole file is rewritten from the
    parsed profile (comments are then lost)."""
    path = Path(path)
    old = load_profile(path)
    new_table = {"peak_flops": roofline.peak_flops,
                 "mem_bandwidth_bytes_per_s": roofline.mem_bandwidth_bytes_per_s,
                 "source": roofline.source}
    text = path.read_text(encoding="utf-8")
    expected = {**old.to_dict(), "roofline": new_table}
    try:
        new_text = replace_section(text, "roofline", new_table)
        ok = profile_from_dict(tomllib.loads(new_text), path).to_dict() == expected
    except (ValueError, tomllib.TOMLDecodeError, ProfileError):
        ok = False
    if not ok:
        new_text = dumps_toml(expected)
    profile = profile_from_dict(tomllib.loads(new_text), path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(new_text, encoding="utf-8")
    os.replace(tmp, path)
    return profile
