"""The ai-edge-quantizer large-weight fix (host/build/quantize.py) against an independent formula."""
from __future__ import annotations

import numpy as np
import pytest

from host.build import quantize


def _params(scale: np.ndarray, qdim: int):
    from ai_edge_quantizer import qtyping

    return qtyping.UniformQuantParams(num_bits=8, quantized_dimension=qdim, scale=scale,
                                      zero_point=np.zeros(scale.shape, np.int32), symmetric=True)


def _expected(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8)  # symmetric narrow range


@pytest.mark.parametrize("qdim", [0, 3])
def test_a_conv_kernel_over_32_mib_quantizes_per_channel(qdim):
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

    rng = np.random.default_rng(0)
    w = rng.standard_normal((1280, 3, 3, 768), np.float32)  # 35 MiB, rank 4: the library's failing case
    assert w.nbytes > 32 * 2**20
    shape = [1] * 4
    shape[qdim] = w.shape[qdim]
    scale = (np.abs(w).max(axis=tuple(i for i in range(4) if i != qdim)) / 127).reshape(shape).astype(np.float32)
    original = getattr(uqt.uniform_quantize, "__wrapped__", uqt.uniform_quantize)
    got = quantize.sliced_uniform_quantize(original, w, _params(scale, qdim))
    assert got.shape == w.shape and got.dtype == np.int8
    np.testing.assert_array_equal(got, _expected(w, scale))
    # Small tensors go to the library untouched.
    small = w[:8]
    sscale = scale[:8] if qdim == 0 else scale
    np.testing.assert_array_equal(quantize.sliced_uniform_quantize(original, small, _params(sscale, qdim)),
                                  _expected(small, sscale))


def test_install_wraps_the_library_once():
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

    quantize.install()
    first = uqt.uniform_quantize
    quantize.install()
    assert uqt.uniform_quantize is first and hasattr(first, "__wrapped__")
    w = np.random.default_rng(1).standard_normal((700, 3, 3, 1600), np.float32)  # 38 MiB
    scale = (np.abs(w).max(axis=(1, 2, 3)) / 127).reshape(-1, 1, 1, 1).astype(np.float32)
    np.testing.assert_array_equal(uqt.uniform_quantize(w, _params(scale, 0)), _expected(w, scale))
