"""Winograd F(m x m, 3 x 3) against direct convolution, in float64 so that only the algebra is tested."""
import pytest
import torch
import torch.nn.functional as F

from models import winograd


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("hw", [(8, 8), (7, 10)])  # whole tiles, and sizes the tile does not divide
def test_conv3x3_equals_direct_convolution(m, hw):
    g = torch.Generator().manual_seed(m)
    x = torch.randn(2, 5, *hw, generator=g, dtype=torch.float64)
    w = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    bker, amat = winograd.transform_kernels(m, torch.float64)
    u = winograd.transform_weight(w, m)
    y = winograd.conv3x3(x, u, b, bker, amat, m)
    ref = F.conv2d(x, w, b, padding=1)
    assert y.shape == ref.shape
    assert torch.allclose(y, ref, rtol=1e-9, atol=1e-9), (y - ref).abs().max()


def test_output_transform_is_the_kronecker_product_of_a_transposed():
    at, _, _ = winograd.matrices(4)
    _, amat = winograd.transform_kernels(4)
    assert amat.shape == (16, 36)
    assert torch.allclose(amat, torch.from_numpy(at).kron(torch.from_numpy(at)).float())
