"""IEEE half-precision conversions in numba (which has no float16 type).

compact-novelty stores its weekly profile as float16 to stay small; its compiled bank
kernel reads and writes those values as raw ``uint16`` bits with these functions, which
round exactly as numpy's float64 → float16 cast does (to nearest, ties to even).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def half_to_double(bits: np.uint16) -> float:
    """The float64 value of half-precision ``bits`` (exact)."""
    h = np.int64(bits)
    sign = -1.0 if h & 0x8000 else 1.0
    exponent = (h >> 10) & 0x1F
    fraction = h & 0x3FF
    if exponent == 0:
        return sign * fraction * 2.0**-24
    if exponent == 31:
        return sign * np.inf if fraction == 0 else np.nan
    return sign * (1.0 + fraction / 1024.0) * 2.0 ** (exponent - 15)


@njit(cache=True, inline="always")
def double_to_half(value: float) -> np.uint16:
    """Half-precision bits of ``value``, rounded to nearest, ties to even (numpy's cast)."""
    bits = np.float64(value).view(np.uint64)
    sign = np.uint16((bits >> np.uint64(48)) & np.uint64(0x8000))
    exponent = bits & np.uint64(0x7FF0000000000000)
    if exponent >= np.uint64(0x40F0000000000000):  # overflow, inf or NaN
        if exponent == np.uint64(0x7FF0000000000000):
            significand = bits & np.uint64(0x000FFFFFFFFFFFFF)
            if significand != np.uint64(0):
                nan = np.uint16(np.uint64(0x7C00) + (significand >> np.uint64(42)))
                return np.uint16(sign + (nan + np.uint16(1) if nan == np.uint16(0x7C00) else nan))
        return np.uint16(sign + np.uint16(0x7C00))
    if exponent <= np.uint64(0x3F00000000000000):  # subnormal half or zero
        if exponent < np.uint64(0x3E60000000000000):
            return sign
        shift = (exponent >> np.uint64(52)) - np.uint64(998)
        significand = np.uint64(0x0010000000000000) + (bits & np.uint64(0x000FFFFFFFFFFFFF))
        significand = significand << shift
        if (significand & np.uint64(0x003FFFFFFFFFFFFF)) != np.uint64(0x0010000000000000):
            significand += np.uint64(0x0010000000000000)
        return np.uint16(sign + np.uint16(significand >> np.uint64(53)))
    half_exponent = np.uint16((exponent - np.uint64(0x3F00000000000000)) >> np.uint64(42))
    significand = bits & np.uint64(0x000FFFFFFFFFFFFF)
    if (significand & np.uint64(0x000007FFFFFFFFFF)) != np.uint64(0x0000020000000000):
        significand += np.uint64(0x0000020000000000)
    half_significand = np.uint16(significand >> np.uint64(42))
    return np.uint16(sign + half_exponent + half_significand)
