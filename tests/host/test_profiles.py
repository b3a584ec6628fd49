"""Device profiles: the shipped files load and match the right devices; bad files fail naming file and key."""
from __future__ import annotations

import copy
import math
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from host.errors import HarnessError
from host.profiles import (
    ACCELERATORS, PLATFORMS, PRECISIONS, DeviceProfile, ProfileError, Roofline, dumps_profile, dumps_toml,
    list_profiles, load_profile, match_android, match_ios, profile_from_dict, profiles_dir, replace_section,
    write_roofline,
)

SHIPPED = {"host", "s23", "s23-ultra", "pixel8", "iphone14pm", "iphone15pro"}
REPO_PROFILES = Path(__file__).resolve().parents[2] / "device_profiles"


@pytest.fixture(autouse=True)
def _default_profiles_dir(monkeypatch):
    monkeypatch.delenv("SDPHONE_PROFILES", raising=False)


# ------------------------------------------------------------------------------------ shipped profiles


def test_shipped_profiles_are_the_expected_set():
    assert profiles_dir() == REPO_PROFILES
    assert set(list_profiles()) == SHIPPED


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_profile_loads(name):
    p = load_profile(name)
    assert isinstance(p, DeviceProfile)
    assert p.name == name and Path(p.path).stem == name
    assert p.platform in PLATFORMS
    assert p.runtime.accelerator in ACCELERATORS and p.runtime.precision in PRECISIONS
    assert p.runtime.threads <= p.hardware.cpu_cores
    for x in (p.roofline.peak_flops, p.roofline.mem_bandwidth_bytes_per_s):
        assert math.isfinite(x) and x > 0
    assert p.roofline.source.strip()
    if p.platform == "android":
        assert p.match.model_patterns and not p.match.product_types
    elif p.platform == "ios":
        assert p.match.product_types and not p.match.model_patterns
    else:
        assert not p.match.model_patterns and not p.match.product_types
    for r in p.references:
        assert r.value_s > 0 and r.label and r.what and r.source
    # loading by path gives the same profile
    assert load_profile(REPO_PROFILES / f"{name}.toml") == p


def test_the_optimized_variant_is_per_device():
    assert load_profile("host").runtime.optimized == "cpu"  # the XNNPACK-friendly set on this machine
    assert load_profile("s23").runtime.optimized == "optimized"  # phones: the paper's GPU set (the default)


def test_host_roofline_is_measured_not_typed():
    p = load_profile("host")
    assert p.runtime.accelerator == "cpu" and p.runtime.precision == "fp32"
    assert p.roofline.source.startswith("measured on this host by `python -m host.hostperf")
    assert re.search(r"on \d{4}-\d{2}-\d{2}:", p.roofline.source)
    assert "--write device_profiles/host.toml" in p.roofline.source


def test_published_references():
    ultra = load_profile("s23-ultra")
    paper = [r for r in ultra.references if "2304.11267" in r.source]
    assert len(paper) == 1 and paper[0].value_s == 12.0
    assert all(s in paper[0].label for s in ("1.4", "512x512", "20 iterations", "GPU", "fp16"))
    apple = [r for r in load_profile("iphone14pm").references if r.value_s == 7.9]
    assert len(apple) == 1
    assert all(s in apple[0].label for s in ("2-1-base", "512x512", "6-bit", "Neural Engine"))
    assert "ml-stable-diffusion" in apple[0].source


def test_roofline_helpers():
    r = load_profile("s23").roofline
    ridge = r.ridge_flops_per_byte
    assert r.attainable_flops(ridge / 10) == pytest.approx(r.peak_flops / 10)
    assert r.attainable_flops(ridge * 10) == r.peak_flops


# --------------------------------------------------------------------------------------------- matching


@pytest.mark.parametrize("model,expected", [
    ("SM-S911B", ["s23"]), ("SM-S911U1", ["s23"]), ("SM-S9110", ["s23"]), ("SM-S911B\r\n", ["s23"]),
    ("SM-S918B", ["s23-ultra"]), ("SM-S918U", ["s23-ultra"]),
    ("SM-S916B", []),          # S23+: no profile
    ("SM-S711B", []),          # S23 FE: a different SoC
    ("XSM-S911B", []),         # full match, not search
    ("Pixel 8", ["pixel8"]),
    ("Pixel 8 Pro", []),       # decided: same SoC but 12 GB and its own class; no silent fallback
    ("Pixel 8a", []),
    ("Pixel 7", []),
    ("iPhone15,3", []),        # an iOS product type is not an Android model
])
def test_match_android(model, expected):
    assert [p.name for p in match_android(model)] == expected


@pytest.mark.parametrize("product_type,expected", [
    ("iPhone15,3", ["iphone14pm"]),
    ("iPhone15,2", []),        # iPhone 14 Pro: left out on purpose
    ("iPhone16,1", ["iphone15pro"]), ("iPhone16,2", ["iphone15pro"]),
    ("iPhone16,3", []), ("iPhone15,30", []), ("SM-S911B", []),
])
def test_match_ios(product_type, expected):
    assert [p.name for p in match_ios(product_type)] == expected


def test_every_android_and_ios_sample_matches_exactly_one_profile():
    for model in ("SM-S911B", "SM-S918B", "Pixel 8"):
        assert len(match_android(model)) == 1
    for pt in ("iPhone15,3", "iPhone16,1", "iPhone16,2"):
        assert len(match_ios(pt)) == 1


def test_profiles_dir_env_override(tmp_path, monkeypatch):
    shutil.copy(REPO_PROFILES / "pixel8.toml", tmp_path / "pixel8.toml")
    monkeypatch.setenv("SDPHONE_PROFILES", str(tmp_path))
    assert profiles_dir() == tmp_path
    assert list_profiles() == ["pixel8"]
    assert load_profile("pixel8").path == str(tmp_path / "pixel8.toml")
    assert [p.name for p in match_android("Pixel 8")] == ["pixel8"]
    assert match_android("SM-S911B") == []


def test_unknown_profile_name_lists_available():
    with pytest.raises(ProfileError) as ei:
        load_profile("s24")
    msg = str(ei.value)
    assert "\n" not in msg and "'s24'" in msg
    for name in SHIPPED:
        assert name in msg
    assert isinstance(ei.value, HarnessError)


def test_missing_profile_path():
    with pytest.raises(ProfileError, match="nowhere.toml: profile file not found"):
        load_profile("/nowhere/nowhere.toml")


# ------------------------------------------------------------------------------------------- validation


def _base(name="s23") -> dict:
    return copy.deepcopy(load_profile(name).to_dict())


def _set(path: str, value):
    def mutate(d):
        *parents, last = path.split(".")
        t = d
        for k in parents:
            t = t[int(k)] if k.isdigit() else t[k]
        t[last] = value
    return mutate


def _del(path: str):
    def mutate(d):
        *parents, last = path.split(".")
        t = d
        for k in parents:
            t = t[int(k)] if k.isdigit() else t[k]
        del t[last]
    return mutate


BAD = [
    # (id, base profile, mutation, key expected in the message, words expected in the message)
    ("missing-key", "s23", _del("roofline.peak_flops"), "roofline.peak_flops", "missing"),
    ("missing-section", "s23", _del("hardware"), "[hardware]", "missing section"),
    ("missing-match", "s23", _del("match"), "[match]", "missing section"),
    ("missing-ref-key", "s23", _del("reference.0.label"), "reference[0].label", "missing"),
    ("wrong-type-int", "s23", _set("hardware.ram_bytes", "8GB"), "hardware.ram_bytes", "expected an integer"),
    ("float-for-int", "s23", _set("hardware.cpu_cores", 8.0), "hardware.cpu_cores", "expected an integer"),
    ("bool-for-int", "s23", _set("runtime.threads", True), "runtime.threads", "expected an integer"),
    ("wrong-type-number", "s23", _set("roofline.mem_bandwidth_bytes_per_s", "64 GB/s"),
     "roofline.mem_bandwidth_bytes_per_s", "expected a number"),
    ("wrong-type-str", "s23", _set("hardware.soc", 8550), "hardware.soc", "expected a string"),
    ("empty-str", "s23", _set("roofline.source", "  "), "roofline.source", "must not be empty"),
    ("wrong-type-list", "s23", _set("match.model_patterns", "SM-S911B"), "match.model_patterns", "list of strings"),
    ("empty-list", "s23", _set("match.model_patterns", []), "match.model_patterns", "must not be empty"),
    ("section-not-table", "s23", _set("runtime", ["gpu"]), "runtime", "expected a table"),
    ("unknown-platform", "s23", _set("device.platform", "windows"), "device.platform", "unknown value 'windows'"),
    ("unknown-accelerator", "s23", _set("runtime.accelerator", "tpu"), "runtime.accelerator", "unknown value 'tpu'"),
    ("unknown-precision", "s23", _set("runtime.precision", "int8"), "runtime.precision", "unknown value 'int8'"),
    ("negative-flops", "s23", _set("roofline.peak_flops", -1.0), "roofline.peak_flops", "must be > 0"),
    ("zero-bandwidth", "s23", _set("roofline.mem_bandwidth_bytes_per_s", 0), "roofline.mem_bandwidth_bytes_per_s",
     "must be > 0"),
    ("negative-ram", "s23", _set("hardware.ram_bytes", -8), "hardware.ram_bytes", "must be > 0"),
    ("zero-threads", "s23", _set("runtime.threads", 0), "runtime.threads", "must be > 0"),
    ("negative-reference", "s23", _set("reference.0.value_s", -12.0), "reference[0].value_s", "must be > 0"),
    ("infinite", "s23", _set("roofline.peak_flops", math.inf), "roofline.peak_flops", "finite"),
    ("invalid-regex", "s23", _set("match.model_patterns", ["SM-S911B", "SM-S911["]), "match.model_patterns[1]",
     "invalid regex"),
    ("unknown-section", "s23", _set("thermals", {"max_c": 45}), "[thermals]", "unknown section"),
    ("unknown-key", "s23", _set("roofline.peak_flop", 1.0), "roofline.peak_flop", "unknown key"),
    ("unknown-ref-key", "s23", _set("reference.0.year", 2023), "reference[0].year", "unknown key"),
    ("ios-key-on-android", "s23", _set("match.product_types", ["iPhone15,3"]), "match.product_types",
     "not allowed for platform 'android'"),
    ("android-key-on-ios", "iphone14pm", _set("match.model_patterns", ["iPhone.*"]), "match.model_patterns",
     "not allowed for platform 'ios'"),
    ("bad-product-type", "iphone14pm", _set("match.product_types", ["iPhone 14 Pro Max"]), "match.product_types[0]",
     "not a product type"),
    ("host-with-match", "host", _set("match", {"model_patterns": ["x"]}), "match.model_patterns", "host"),
    ("host-on-gpu", "host", _set("runtime.accelerator", "gpu"), "runtime.accelerator", "cpu"),
    ("unknown-optimized", "host", _set("runtime.optimized", "turbo"), "runtime.optimized", "unknown value 'turbo'"),
    ("name-mismatch", "s23", _set("device.name", "s23u"), "device.name", "does not match the file name"),
    ("bad-name", "s23", _set("device.name", "s 23"), "device.name", "not a valid profile name"),
]


@pytest.mark.parametrize("base,mutate,key,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_validation_error_names_file_and_key(tmp_path, base, mutate, key, words):
    data = _base(base)
    mutate(data)
    path = tmp_path / f"{base}.toml"
    path.write_text(dumps_toml(data), encoding="utf-8")
    with pytest.raises(ProfileError) as ei:
        load_profile(path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: "), msg
    assert key in msg, msg
    assert words in msg, msg


def test_invalid_toml_names_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[device\nname = 's23'\n", encoding="utf-8")
    with pytest.raises(ProfileError) as ei:
        load_profile(path)
    assert str(ei.value).startswith(f"{path}: not valid TOML")


def test_reference_must_be_array_of_tables(tmp_path):
    data = _base()
    data["reference"] = {"label": "x"}
    path = tmp_path / "s23.toml"
    path.write_text(dumps_toml(data), encoding="utf-8")
    with pytest.raises(ProfileError, match=r"s23\.toml: reference: expected an array of tables"):
        load_profile(path)


def test_broken_profile_in_dir_fails_matching_loudly(tmp_path, monkeypatch):
    shutil.copy(REPO_PROFILES / "s23.toml", tmp_path / "s23.toml")
    (tmp_path / "bad.toml").write_text('[device]\nname = "bad"\n', encoding="utf-8")
    monkeypatch.setenv("SDPHONE_PROFILES", str(tmp_path))
    with pytest.raises(ProfileError, match=r"bad\.toml: device\.platform: missing"):
        match_android("SM-S911B")


# ---------------------------------------------------------------------------------------------- writer


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_writer_round_trips_every_profile(tmp_path, name):
    p = load_profile(name)
    text = dumps_profile(p)
    assert tomllib.loads(text) == p.to_dict()
    out = tmp_path / f"{name}.toml"
    out.write_text(text, encoding="utf-8")
    assert load_profile(out) == p
    assert dumps_profile(load_profile(out)) == text


def test_writer_scalars_round_trip():
    data = {"top": 1, "t": {
        "plain": "abc", "quotes": 'say "hi" \\ there', "newline": "a\nb\tc\r", "control": "\x01\x7f",
        "unicode": "naïve – 12 s ≤", "ints": [0, -3, 2**62], "floats": [0.1, 12.0, 7.9, 1.52e11, 5.12e10, 1e-7,
                                                                      -2.5e-300, 0.0, 123456.789, 1e6],
        "bools": [True, False], "weird key": "x", "empty": [],
    }, "arr": [{"a": 1}, {"a": 2, "b": "z"}]}
    text = dumps_toml(data)
    assert tomllib.loads(text) == data
    assert "1.52e+11" in text  # large floats in scientific notation, shortest exact form


def test_writer_rejects_nested_tables():
    with pytest.raises(TypeError):
        dumps_toml({"t": {"nested": {"x": 1}}})


SPLICE_SRC = """# leading comment
[device]
name = "host"  # trailing comment

[roofline]
peak_flops = 1.0
# old comment inside roofline
mem_bandwidth_bytes_per_s = 2.0
source = "old"

# comment that belongs to the next section
[[reference]]
label = "x"
"""


def test_replace_section_keeps_everything_else():
    out = replace_section(SPLICE_SRC, "roofline", {"peak_flops": 3.0, "source": "new"})
    assert out.startswith('# leading comment\n[device]\nname = "host"  # trailing comment\n\n[roofline]\n')
    assert 'peak_flops = 3.0\nsource = "new"\n\n# comment that belongs to the next section\n[[reference]]' in out
    assert "old" not in out
    with pytest.raises(ValueError):
        replace_section(SPLICE_SRC, "hardware", {})
    with pytest.raises(ValueError):
        replace_section(SPLICE_SRC, "reference", {})  # an array of tables, not a table


def test_write_roofline_keeps_comments_and_other_sections(tmp_path):
    path = tmp_path / "host.toml"
    shutil.copy(REPO_PROFILES / "host.toml", path)
    before = load_profile(path)
    original = path.read_text(encoding="utf-8")
    new = Roofline(peak_flops=1.23e11, mem_bandwidth_bytes_per_s=4.56e9, source="test source")
    after = write_roofline(path, new)
    assert after.roofline == new and load_profile(path).roofline == new
    for attr in ("device", "match", "hardware", "runtime", "references"):
        assert getattr(after, attr) == getattr(before, attr)
    text = path.read_text(encoding="utf-8")
    head = original.split("[roofline]")[0]
    assert text.startswith(head)  # comments and everything before the roofline kept byte for byte
    assert not list(tmp_path.glob(".host.toml.tmp*"))


def test_write_roofline_falls_back_to_full_rewrite(tmp_path):
    # an inline-table roofline cannot be spliced; the file is rewritten from the parsed profile instead
    data = _base("host")
    text = dumps_toml({k: v for k, v in data.items() if k != "roofline"})
    rf = data["roofline"]
    text = (f'roofline = {{ peak_flops = {rf["peak_flops"]!r}, mem_bandwidth_bytes_per_s = '
            f'{rf["mem_bandwidth_bytes_per_s"]!r}, source = "inline" }}\n' + text)
    path = tmp_path / "host.toml"
    path.write_text(text, encoding="utf-8")
    assert load_profile(path).roofline.source == "inline"
    new = Roofline(peak_flops=2e11, mem_bandwidth_bytes_per_s=1e10, source="rewritten")
    after = write_roofline(path, new)
    assert after.roofline == new and load_profile(path).hardware == profile_from_dict(data).hardware
