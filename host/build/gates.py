"""Verification gates. Every threshold is a named constant; every check rejects non-finite output.

Metrics:
  rel_err(test, ref) = ||test - ref||_2 / ||ref||_2
  psnr_db(test, ref) = 10 log10(peak^2 / mse), peak = max(ref) - min(ref) (the reference's own range,
                       2.0 for an image that spans [-1, 1]; robust for random-weight decoders too)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from host.errors import GateError

# Each .tflite against the PyTorch module it was converted from, by weight precision. Measured on the
# tiny config: fp32 <= 1.3e-5 (full size <= 1.3e-5), fp16 <= 5.4e-3, int8 (no Winograd) <= 4.2e-2.
TFLITE_VS_TORCH_REL_ERR = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.1}
# Our baseline PyTorch modules against diffusers / transformers with the same weights (fp32).
DIFFUSERS_REL_ERR = 1e-4
# fp32 variants (their .tflite) against the baseline PyTorch module. Winograd F(6x6, 3x3) needs no bound
# of its own: on the tiny config it measured 6.4e-6 (UNet) and 121.7 dB (decoder), against 3.1e-6 and
# 128.3 dB for m=4; at full size, in PyTorch fp32, m=6 measured 1.1e-5 and 118.6 dB (m=4: 5.6e-6, 124.4 dB),
# and the full-size optimized (m=4) .tflite files 6.8e-6 and 122 dB.
VARIANT_REL_ERR = 1e-4
VARIANT_PSNR_DB = 40.0
# Quantized variants against the fp32 baseline: weights are rounded on purpose. Measured on the tiny
# config: fp16 4.5e-3 (UNet) and 64.6 dB (decoder); int8 4.2e-2 and 47.4 dB.
QUANT_REL_ERR = {"fp16": 1e-2, "int8": 0.1}
QUANT_PSNR_DB = {"fp16": 40.0, "int8": 30.0}


def rel_err(test: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    den = float(np.linalg.norm(ref))
    return float(np.linalg.norm(np.asarray(test, np.float64) - ref) / (den if den > 0 else 1.0))


def psnr_db(test: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    mse = float(np.mean((np.asarray(test, np.float64) - ref) ** 2))
    peak = float(ref.max() - ref.min()) or 1.0
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


@dataclass(frozen=True)
class GateResult:
    check: str          # "tflite_vs_torch" | "variant_vs_baseline" | "baseline_vs_diffusers"
    component: str
    metric: str         # "rel_err" | "psnr_db"
    value: float
    bound: float
    passed: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["value"] = None if not math.isfinite(self.value) else self.value
        return d


def require_finite(component: str, what: str, arr: np.ndarray) -> None:
    if not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise GateError(f"{component}: {what} has {bad} non-finite values (NaN/inf)")


def check(check_name: str, component: str, test: np.ndarray, ref: np.ndarray, metric: str, bound: float) -> GateResult:
    require_finite(component, f"{check_name} output", test)
    require_finite(component, f"{check_name} reference", ref)
    if metric == "rel_err":
        v = rel_err(test, ref)
        ok = v <= bound
    else:
        v = psnr_db(test, ref)
        ok = v >= bound
    return GateResult(check_name, component, metric, v, bound, ok)


def enforce(results: list[GateResult]) -> None:
    for r in results:
        if not r.passed:
            op = "<=" if r.metric == "rel_err" else ">="
            raise GateError(f"{r.component}: gate {r.check} failed: {r.metric}={r.value:.3g}, needs {op} {r.bound:g}")


def variant_bounds(component: str, quantization: str) -> tuple[str, float]:
    """(metric, bound) of the variant-vs-baseline gate for one component."""
    if component == "vae_decoder":
        return "psnr_db", QUANT_PSNR_DB[quantization] if quantization != "fp32" else VARIANT_PSNR_DB
    return "rel_err", QUANT_REL_ERR[quantization] if quantization != "fp32" else VARIANT_REL_ERR
