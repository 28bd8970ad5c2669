"""The OCP element formats beside the ml_dtypes types that implement them (the reference)."""

import ml_dtypes

from lowbit import E2M1, E4M3, E5M2

#: ``(format, ml_dtypes type)`` for each OCP format lowbit defines, as ``parametrize`` takes it.
OCP_DTYPES = [
    (E2M1, ml_dtypes.float4_e2m1fn),
    (E4M3, ml_dtypes.float8_e4m3fn),
    (E5M2, ml_dtypes.float8_e5m2),
]
