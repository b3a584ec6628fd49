"""Winograd F(m x m, 3 x 3) against direct convolution, in float64 so that only the algebra is tested."""
import pytest
import torch
import torch.nn.functional as F

from models import winograd


@pytest.mark.parametrize("fold_input", [False, True])  # the input transform's two layouts
@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("hw", [(8, 8), (7, 10)])  # whole tiles, and sizes the tile does not divide
def test_conv3x3_equals_direct_convolution(m, hw, fold_input):
    g = torch.Generator().manual_seed(m)
    x = torch.randn(2, 5, *hw, generator=g, dtype=torch.float64)
    w = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    bker, amat = winograd.transform_kernels(m, torch.float64)
    u = winograd.transform_weight(w, m)
    y = winograd.conv3x3(x, u, b, bker, amat, m, fold_input=fold_input)
    ref = F.conv2d(x, w, b, padding=1)
    assert y.shape == ref.shape
    assert torch.allclose(y, ref, rtol=1e-9, atol=1e-9), (y - ref).abs().max()


def test_output_transform_is_the_kronecker_product_of_a_transposed():
    at, _, _ = winograd.matrices(4)
    _, amat = winograd.transform_kernels(4)
    assert amat.shape == (16, 36)
    assert torch.allclose(amat, torch.from_numpy(at).kron(torch.from_numpy(at)).float())


def test_fold_input_follows_the_size_of_the_winograd_domain_input(monkeypatch):
    """Left to itself, conv3x3 folds the input layout change exactly when the transformed input is over
    FOLD_INPUT_BYTES (36 tile positions x 2 x 4 tiles x 8 channels x 4 bytes = 9216 bytes here)."""
    x = torch.randn(2, 8, 8, 8)
    w = torch.randn(8, 8, 3, 3)
    bker, amat = winograd.transform_kernels(4)
    u = winograd.transform_weight(w, 4)
    seen = []
    real = torch.Tensor.permute

    def spy(t, *dims):
        seen.append(tuple(dims[0]) if len(dims) == 1 else dims)
        return real(t, *dims)

    monkeypatch.setattr(torch.Tensor, "permute", spy)
    for limit, folded in ((9216, False), (9215, True)):
        seen.clear()
        monkeypatch.setattr(winograd, "FOLD_INPUT_BYTES", limit)
        winograd.conv3x3(x, u, None, bker, amat, 4)
        assert ((3, 0, 2, 1) in seen) is folded and ((2, 0, 3, 1) in seen) is not folded, (limit, seen)


@pytest.mark.parametrize("fold_input", [False, True])
def test_converted_conv_has_one_layout_transpose_less_when_folded(tmp_path, fold_input):
    """Through litert-torch: the folded input layout change leaves one TRANSPOSE, not two (the permute
    cancels the converter's own), the output two plain ones; the LiteRT result matches direct convolution."""
    import numpy as np
    import litert_torch

    from host.build.tflite_info import op_histogram
    from host.runtime import open_model

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.w = torch.randn(16, 16, 3, 3, generator=g) * 0.1
            self.register_buffer("u", winograd.transform_weight(self.w, 4))
            bker, amat = winograd.transform_kernels(4)
            self.register_buffer("bker", bker)
            self.register_buffer("amat", amat)
            self.register_buffer("b", torch.randn(16, generator=g))

        def forward(self, x):
            return winograd.conv3x3(x, self.u, self.b, self.bker, self.amat, 4, fold_input=fold_input)

    mod = Conv().eval()
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "conv.tflite"
    litert_torch.convert(mod, (x,)).export(str(path))
    assert op_histogram(str(path))["main"]["TRANSPOSE"] == (3 if fold_input else 4)
    model = open_model(str(path), threads=1)
    out = next(iter(model.run(**{next(iter(model.inputs)): x.numpy()}).values()))
    ref = F.conv2d(x, mod.w, mod.b, padding=1).numpy()
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
