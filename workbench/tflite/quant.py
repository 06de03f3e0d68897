"""Quantization arithmetic for the layers workbench appends (TFLite's affine int8/uint8 scheme)."""

from __future__ import annotations

import numpy as np

from workbench.tflite.graph import Quant

_LIMITS = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def limits(dtype: np.dtype | type) -> tuple[int, int]:
    return _LIMITS[np.dtype(dtype)]


def range_quant(lo: float, hi: float, dtype: np.dtype | type) -> Quant:
    """Asymmetric parameters covering [lo, hi], widened to include 0 so zero is exact."""
    qmin, qmax = limits(dtype)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / (qmax - qmin)
    zero_point = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return Quant.per_tensor(scale, zero_point)


def symmetric_quant(values: np.ndarray, dtype: np.dtype | type = np.int8) -> Quant:
    """Zero point 0, scale from the largest magnitude: what int8 weights must use in TFLite."""
    qmax = limits(dtype)[1]
    peak = float(np.max(np.abs(values))) if np.size(values) else 0.0
    return Quant.per_tensor(max(peak, 1e-8) / qmax, 0)


def quantize(values: np.ndarray, quant: Quant, dtype: np.dtype | type) -> np.ndarray:
    """Round to the nearest level of `quant` and clip to the integer type."""
    qmin, qmax = limits(dtype)
    q = np.round(np.asarray(values, np.float64) / quant.scale[0]) + quant.zero_point[0]
    return np.clip(q, qmin, qmax).astype(dtype)


def dequantize(values: np.ndarray, quant: Quant) -> np.ndarray:
    return (np.asarray(values, np.float64) - quant.zero_point[0]) * quant.scale[0]


def representable(quant: Quant, dtype: np.dtype | type) -> tuple[float, float]:
    """The real values the lowest and highest integer of `dtype` stand for under `quant`."""
    lo, hi = dequantize(np.asarray(limits(dtype)), quant)
    return float(lo), float(hi)


def quantize_bias(values: np.ndarray, scale: float) -> np.ndarray:
    """int32 bias with zero point 0 and scale = input scale x weight scale, as TFLite requires."""
    limit = 2**31 - 1
    return np.clip(np.round(np.asarray(values, np.float64) / scale), -limit, limit).astype(np.int32)
