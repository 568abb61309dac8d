"""How close two floating-point results must be: the one tolerance policy of the tests and
the book.

Exact equality is kept where it is real: integer ids, RNG draws, and one computation repeated
with the same shapes on the same device. Everything else is compared relative to the largest
magnitude of the reference, ``max|a - b| / max|b|``, against a bound chosen by the dtype the
computation ran in and by whether its float32 matrix products may run in TF32 (MLX's CUDA backend
does by default, as do Apple's M5-class GPUs; ``MLX_ENABLE_TF32=0`` turns it off). The bounds sit
a small factor above differences measured on MLX's CPU and CUDA backends (see the README's
"Tolerance policy"). Built for every chapter; explained in Chapter 2.
"""

from __future__ import annotations

import os

import mlx.core as mx
import numpy as np

# max|a - b| / max|b| allowed when the same math runs through different kernels or orders
# (a cached decode step vs a full prefill, a fused kernel vs the reference, CPU vs GPU).
# Measured on 2026-11-29, MLX 0.32.4 (3-layer models, 300 positions, cached vs full, fused vs
# reference, CPU vs GPU):
FLOAT32 = 1e-5  # full float32 products: ≤ 5.1e-7 (CPU backend; CUDA with MLX_ENABLE_TF32=0)
TF32 = 5e-3  # float32 inputs, TF32 products (CUDA default): ≤ 4.6e-4 in the model,
#              1.2e-3 in a test's deeper stack
FLOAT16 = 5e-3  # 11-bit mantissa: 8× finer than bfloat16's
BFLOAT16 = 3e-2  # 8-bit mantissa: ≤ 7.6e-3 (cached vs full and CPU vs GPU, both backends)


def tf32_possible(device: mx.Device | mx.DeviceType | None = None) -> bool:
    """True where float32 matrix products may run at TF32 precision: a GPU, unless
    MLX_ENABLE_TF32=0."""
    device = device or mx.default_device()
    kind = getattr(device, "type", device)  # mx.gpu is a DeviceType, mx.default_device() a Device
    return kind == mx.DeviceType.gpu and os.environ.get("MLX_ENABLE_TF32", "1") != "0"


def bound(dtype: mx.Dtype = mx.float32, device: mx.Device | mx.DeviceType | None = None) -> float:
    """The relative bound for results computed in ``dtype`` on ``device`` (default: the
    default device)."""
    if dtype == mx.bfloat16:
        return BFLOAT16
    if dtype == mx.float16:
        return FLOAT16
    return TF32 if tf32_possible(device) else FLOAT32


def relative_difference(actual, expected) -> float:
    """max|actual - expected| / max|expected| in float64 (0.0 when both are all zeros)."""
    a = np.asarray(actual.astype(mx.float32) if isinstance(actual, mx.array) else actual,
                   dtype=np.float64)
    e = np.asarray(expected.astype(mx.float32) if isinstance(expected, mx.array) else expected,
                   dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {e.shape}")
    scale = float(np.abs(e).max()) if e.size else 0.0
    diff = float(np.abs(a - e).max()) if e.size else 0.0
    return diff / scale if scale > 0 else diff


def assert_close(actual, expected, *, dtype: mx.Dtype = mx.float32, rtol: float | None = None,
                 what: str = "values") -> None:
    """Assert ``relative_difference(actual, expected) <= rtol`` (default ``bound(dtype)``).

    Returns nothing, so that a check ending a notebook cell prints nothing machine-dependent.
    """
    limit = bound(dtype) if rtol is None else rtol
    diff = relative_difference(actual, expected)
    if not diff <= limit:
        raise AssertionError(f"{what} differ by {diff:.3g} relative to the largest value; "
                             f"the bound for {dtype} on {mx.default_device()} is {limit:.3g}")
