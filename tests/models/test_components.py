"""Module construction without torch's default initialisation, and the seeded random weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.components import build_module, load_weights, random_state_dict, uninitialised
from models.config import get_model_config


def test_uninitialised_skips_the_default_init_and_puts_it_back_even_on_error():
    before = torch.nn.init.kaiming_uniform_
    with uninitialised():
        lin = torch.nn.Linear(4, 4)
        torch.nn.init.constant_(lin.weight, 7.0)  # a no-op while open
        assert torch.nn.init.kaiming_uniform_ is not before
    assert not torch.equal(lin.weight, torch.full((4, 4), 7.0))
    with pytest.raises(RuntimeError, match="boom"):
        with uninitialised():
            raise RuntimeError("boom")
    assert torch.nn.init.kaiming_uniform_ is before
    torch.nn.init.constant_(lin.weight, 7.0)
    assert torch.equal(lin.weight, torch.full((4, 4), 7.0))


def test_random_weights_are_reproducible_per_seed_and_fan_in_scaled():
    cfg = get_model_config("tiny")
    a = random_state_dict(build_module("unet", cfg), 0)
    b = random_state_dict(build_module("unet", cfg), 0)
    c = random_state_dict(build_module("unet", cfg), 1)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(a[k].dtype == torch.float32 for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a if a[k].numel() > 1)
    conv = next(k for k, v in a.items() if v.dim() == 4 and v.numel() > 10_000)
    fan_in = math.prod(a[conv].shape[1:])
    assert a[conv].std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.05)
    norm = next(k for k in a if "norm" in k and k.endswith("weight"))
    assert a[norm].mean().item() == pytest.approx(1.0, abs=0.01)


def test_a_module_built_uninitialised_runs_finite_once_loaded():
    from models.components import sample_inputs

    cfg = get_model_config("tiny")
    m = build_module("vae_decoder", cfg)
    load_weights(m, random_state_dict(m, 0))
    with torch.no_grad():
        y = m(**sample_inputs("vae_decoder", cfg))
    assert torch.isfinite(y).all()


def _layer(kind: str) -> tuple[torch.nn.Module, tuple]:
    from models.blocks import Attention
    from models.config import Optimizations
    from models.layers import Conv2d, Conv3x3

    x = torch.randn(1, 32, 12, 12)
    if kind == "conv3x3":
        return Conv3x3(32, 48, 0), (x,)
    if kind == "conv_stride2":
        return Conv2d(32, 48, 3, stride=2, padding=1), (x,)
    if kind.startswith("winograd"):
        return Conv3x3(32, 48, int(kind[-1])), (x,)
    if kind == "transformer_block":  # at the UNet's narrowest width
        from models.blocks import BasicTransformerBlock

        return BasicTransformerBlock(320, 8, 96, "softmax", Optimizations()), (torch.randn(1, 64, 320), torch.randn(1, 77, 96))
    bias = kind == "attention_bias"  # the VAE's, with biases and a group norm
    return Attention(64, 2, None, bias, "softmax", Optimizations(), groups=8 if bias else None), (torch.randn(1, 40, 64),)


@pytest.mark.parametrize("kind", ["conv3x3", "conv_stride2", "winograd4", "winograd2", "attention", "attention_bias",
                                  "transformer_block"])
def test_prepared_layers_leave_the_converter_no_op_on_constants(kind, tmp_path, monkeypatch):
    """Converted without LiteRT's runtime constant folding (which would otherwise serialise and run the whole
    model once more), a prepared layer has no op whose inputs are all constants. The test session's resource
    threshold (1024 elements) puts these weights on the path the large full-size weights take; the transformer
    block runs at full width under litert-torch's own threshold, where the optimizer's fusion of its layer
    norm into the feed-forward appeared."""
    import litert_torch

    if kind == "transformer_block":
        monkeypatch.setenv("RESOURCE_CONSTANT_NUMEL_THRESHOLD", str(1 << 20))

    from host.build.tflite_info import constant_only_ops
    from models.layers import prepare

    torch.manual_seed(0)
    m, args = _layer(kind)
    for p in m.parameters():
        torch.nn.init.normal_(p, 0.0, 0.1)
    m.eval().requires_grad_(False)
    with torch.no_grad():
        # Winograd runs only once prepared: its reference is the direct convolution of the same kernel
        before = F.conv2d(*args, m.weight, m.bias, padding=1) if kind.startswith("winograd") else m(*args)
        prepare(prepare(m))  # twice: the second call changes nothing
        after = m(*args)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    path = str(tmp_path / "m.tflite")
    litert_torch.convert(m, args, lightweight_conversion=True, runtime_constant_folding=False).export(path)
    assert constant_only_ops(path) == {}
    if kind == "transformer_block":  # the GEGLU projection runs as two halves: no copy of its output to split it
        from host.build.tflite_info import op_histogram

        ops = op_histogram(path)["main"]
        assert "SLICE" not in ops and "STRIDED_SLICE" not in ops and "SPLIT" not in ops, ops
