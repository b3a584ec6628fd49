"""The graph checks the build relies on, on small converted modules."""
from __future__ import annotations

import pytest
import torch

from host.build.tflite_info import constant_only_ops, op_histogram, runtime_weight_ops


class _Conv(torch.nn.Module):
    """A conv: the converter moves its OIHW kernel to TFLite's OHWI with a transpose it must fold."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("fold", [True, False])
def test_constant_only_ops_finds_what_conversion_left_unfolded(tmp_path, fold):
    import litert_torch

    path = str(tmp_path / "m.tflite")
    x = torch.randn(1, 16, 8, 8)
    litert_torch.convert(_Conv().eval(), (x,), lightweight_conversion=True,
                         runtime_constant_folding=fold).export(path)
    left = constant_only_ops(path)
    if fold:
        assert left == {} and op_histogram(path)["main"]["TRANSPOSE"] == 2  # the activation's NCHW <-> NHWC
    else:
        assert left == {"TRANSPOSE": 1}


class _SingleHeadScores(torch.nn.Module):
    """q @ k^T of one batch and one head (the VAE decoder's attention), plain or through ``layers.scores``."""

    def __init__(self, split: bool):
        super().__init__()
        self.split = split

    def forward(self, q, k):
        from models.layers import scores

        return scores(q, k) if self.split else q @ k.transpose(-1, -2)


@pytest.mark.parametrize("split", [False, True])
def test_runtime_weight_ops_finds_the_single_head_attention_product(tmp_path, split):
    import litert_torch

    path = str(tmp_path / "m.tflite")
    q, k = torch.randn(1, 1, 64, 16), torch.randn(1, 1, 48, 16)
    m = _SingleHeadScores(split).eval()
    torch.testing.assert_close(m(q, k), q @ k.transpose(-1, -2))
    litert_torch.convert(m, (q, k)).export(path)
    ops = op_histogram(path)["main"]
    if split:
        assert runtime_weight_ops(path) == {} and ops["BATCH_MATMUL"] == 1 and "FULLY_CONNECTED" not in ops
    else:
        assert runtime_weight_ops(path) == {"FULLY_CONNECTED": 1}
