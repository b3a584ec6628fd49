"""A fix for ai-edge-quantizer 0.10's large-weight path, so int8/fp16 builds work at full size.

``uniform_quantize`` quantizes a tensor of more than 32 MiB in row chunks: it reshapes the data to two
dimensions but broadcasts the per-channel scales (kept at the tensor's rank) to that 2-D shape, which
numpy refuses for any rank > 2 ("input operand has more dimensions than allowed by the axis remapping").
Every SD 1.x UNet has such conv kernels (1280 x 3 x 3 x 1280 fp32 is 56 MiB), tiny configs have none, and
litert-torch's int8 recipes go through the same function, so full-size quantization failed for both.

``install()`` wraps the function: a tensor of rank > 2 over the limit is quantized in slices along its
leading axis (each under the limit, so the library's plain path handles it) and the slices are joined.
Slicing is exact for per-tensor scales and for per-channel scales on any axis (their slice is taken along
with the data when they vary along axis 0). Everything else is passed through unchanged.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

_CHUNK_BYTES = 32 * 1024 * 1024  # the library's own threshold for its chunked path
_installed = False


def source_hash() -> str:
    """Part of an int8/fp16 component's cache key: this fix decides those bytes."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def sliced_uniform_quantize(original, tensor_data: np.ndarray, quantization_params, is_blockwise_quant: bool = False):
    """``original(tensor_data, quantization_params, is_blockwise_quant)``, in leading-axis slices where the
    library's chunked path would break (rank > 2, over 32 MiB, not blockwise)."""
    if (is_blockwise_quant or tensor_data.ndim <= 2 or tensor_data.nbytes <= _CHUNK_BYTES
            or tensor_data.shape[0] < 2):
        return original(tensor_data, quantization_params, is_blockwise_quant)
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

    params = uqt.fix_quantization_params_rank(tensor_data, quantization_params)
    scale, zero_point = np.asarray(params.scale), np.asarray(params.zero_point)
    rows = max(1, _CHUNK_BYTES // max(1, tensor_data[0].nbytes))
    parts = []
    for k in range(0, tensor_data.shape[0], rows):
        sl = slice(k, k + rows)
        part = dataclasses.replace(
            params,
            scale=scale[sl] if scale.ndim and scale.shape[0] > 1 else scale,
            zero_point=zero_point[sl] if zero_point.ndim and zero_point.shape[0] > 1 else zero_point,
        )
        parts.append(original(tensor_data[sl], part, False))
    return np.concatenate(parts, axis=0)


def install() -> None:
    """Wraps ``uniform_quantize_tensor.uniform_quantize`` once per process (callers look it up at call
    time, including the module itself)."""
    global _installed
    if _installed:
        return
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

    original = uqt.uniform_quantize

    def uniform_quantize(tensor_data, quantization_params, is_blockwise_quant=False):
        return sliced_uniform_quantize(original, tensor_data, quantization_params, is_blockwise_quant)

    uniform_quantize.__wrapped__ = original  # type: ignore[attr-defined]
    uqt.uniform_quantize = uniform_quantize
    _installed = True
