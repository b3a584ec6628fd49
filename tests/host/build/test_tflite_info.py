"""The graph checks the build relies on, on small converted modules."""
from __future__ import annotations

import pytest
import torch

from host.build.tflite_info import constant_only_ops, op_histogram


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
