"""Folding algebra: pure numpy, no graphs.

Inference BatchNormalization is, per channel c, the affine map

    y = s[c] * x + t[c],   s = gamma / sqrt(var + eps),   t = beta - mean * s.

A linear layer ``z = W x + b`` followed by that map (backward fold) becomes

    W'[c] = s[c] * W[c],   b'[c] = s[c] * b[c] + t[c]          (c: output channel)

and the map followed by a linear layer (forward fold) becomes

    W'[:, c] = W[:, c] * s[c],   b' = b + sum_{c, window} W[:, c] * t[c]   (c: input channel)

where the shift part is exact only when no zero padding is added (a padded
position sees 0, not t[c]). Two maps compose: (s2, t2) after (s1, t1) is
(s2 * s1, s2 * t1 + t2) (``Affine.then``).

Every function takes and returns float64 arrays; rules cast back to the
model's dtype once, with ``rule.cast`` (which calls :func:`cast_exact_dtype`).
"""

from __future__ import annotations

import numpy as np

FloatArray = np.ndarray


def bn_scale_shift(
    gamma: FloatArray, beta: FloatArray, mean: FloatArray, var: FloatArray, eps: float
) -> tuple[FloatArray, FloatArray]:
    """(s, t) of inference BN: s = gamma / sqrt(var + eps), t = beta - mean * s."""
    g, b, m, v = (np.asarray(a, dtype=np.float64) for a in (gamma, beta, mean, var))
    s = g / np.sqrt(v + np.float64(eps))
    return s, b - m * s


def _f64(a: FloatArray | None, n: int) -> FloatArray:
    return np.zeros(n) if a is None else np.asarray(a, dtype=np.float64)


def _per_out(v: FloatArray, ndim: int) -> FloatArray:
    """(C,) -> (C, 1, ..., 1) to broadcast over a weight of rank ``ndim``."""
    return v.reshape((-1,) + (1,) * (ndim - 1))


def conv_output(
    w: FloatArray, b: FloatArray | None, s: FloatArray, t: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Backward fold into Conv, W: (M, C/group, *kernel); any group, 1D/2D/3D."""
    w64 = np.asarray(w, dtype=np.float64)
    return w64 * _per_out(s, w64.ndim), s * _f64(b, w64.shape[0]) + t


def convtranspose_output(
    w: FloatArray, b: FloatArray | None, s: FloatArray, t: FloatArray, group: int
) -> tuple[FloatArray, FloatArray]:
    """Backward fold into ConvTranspose, W: (C, M/group, *kernel).

    Output channel o = g * (M/group) + j is produced by W[c, j] for the input
    channels c of group g, so W'[c, j] = W[c, j] * s[(c // (C/group)) * (M/group) + j].
    """
    w64 = np.asarray(w, dtype=np.float64)
    c_in, m_per_group = w64.shape[0], w64.shape[1]
    group_of_c = np.arange(c_in) // (c_in // group)
    idx = group_of_c[:, None] * m_per_group + np.arange(m_per_group)[None, :]  # (C, M/group)
    scale = s[idx].reshape((c_in, m_per_group) + (1,) * (w64.ndim - 2))
    return w64 * scale, s * _f64(b, m_per_group * group) + t


def gemm_output(
    b_mat: FloatArray,
    c: FloatArray | None,
    s: FloatArray,
    t: FloatArray,
    *,
    trans_b: bool,
    beta: float,
) -> tuple[FloatArray, FloatArray]:
    """Backward fold into Gemm Y = alpha * A @ B + beta * C over output columns N.

    Returns (B', C') for a Gemm whose beta is then 1: B' scales B's N columns
    by s; C' = s * beta * C + t.
    """
    b64 = np.asarray(b_mat, dtype=np.float64)
    b_new = b64 * s[:, None] if trans_b else b64 * s[None, :]  # B is (N, K) or (K, N)
    c_new = t if c is None else s * (beta * np.asarray(c, dtype=np.float64)) + t
    return b_new, c_new


def matmul_output(w: FloatArray, s: FloatArray) -> FloatArray:
    """Backward fold of the scale into MatMul X @ W, W: (..., K, N), over N."""
    return np.asarray(w, dtype=np.float64) * s


def conv_input(
    w: FloatArray,
    b: FloatArray | None,
    s: FloatArray,
    t: FloatArray | None,
    group: int,
) -> tuple[FloatArray, FloatArray]:
    """Forward fold into Conv, W: (M, C/group, *kernel), s and t over the C inputs.

    Output channel m of group g = m // (M/group) reads input channels
    g * (C/group) + j, so W'[m, j] = W[m, j] * s[g * (C/group) + j] and
    b'[m] = b[m] + sum_{j, kernel} W[m, j] * t[g * (C/group) + j]. Pass
    ``t=None`` to fold the scale only (zero padding present).
    """
    w64 = np.asarray(w, dtype=np.float64)
    m_out, c_per_group = w64.shape[0], w64.shape[1]
    group_of_m = np.arange(m_out) // (m_out // group)
    idx = group_of_m[:, None] * c_per_group + np.arange(c_per_group)[None, :]  # (M, C/group)
    spatial = (1,) * (w64.ndim - 2)
    w_new = w64 * s[idx].reshape((m_out, c_per_group, *spatial))
    b_new = _f64(b, m_out)
    if t is not None:
        kernel_sum = w64.reshape(m_out, c_per_group, -1).sum(axis=2)  # (M, C/group)
        b_new = b_new + (kernel_sum * t[idx]).sum(axis=1)
    return w_new, b_new


def convtranspose_input(
    w: FloatArray, b: FloatArray | None, s: FloatArray, t: FloatArray | None, group: int
) -> tuple[FloatArray, FloatArray]:
    """Forward fold into ConvTranspose, W: (C, M/group, *kernel).

    The scale always folds (W'[c] = s[c] * W[c]). A constant input t[c]
    reaches every output position through the whole kernel only for 1x1
    kernels at stride 1 without padding; callers pass ``t`` only then:
    b'[g * (M/group) + j] = b + sum_{c in g, kernel} W[c, j] * t[c].
    """
    w64 = np.asarray(w, dtype=np.float64)
    c_in, m_per_group = w64.shape[0], w64.shape[1]
    w_new = w64 * _per_out(s, w64.ndim)
    b_new = _f64(b, m_per_group * group)
    if t is not None:
        contrib = w64.reshape(c_in, m_per_group, -1).sum(axis=2) * t[:, None]  # (C, M/group)
        per_group = contrib.reshape(group, c_in // group, m_per_group).sum(axis=1)
        b_new = b_new + per_group.reshape(-1)
    return w_new, b_new


def gemm_input(
    b_mat: FloatArray,
    c: FloatArray | None,
    s: FloatArray,
    t: FloatArray | None,
    *,
    trans_b: bool,
    alpha: float,
    beta: float,
) -> tuple[FloatArray, FloatArray | None]:
    """Forward fold into Gemm over A's K columns; returns (B', C') for beta = 1.

    Y = alpha * (A * s + t) @ B + beta * C
      = alpha * A @ (s[:, None] * B) + (beta * C + alpha * t @ B).
    """
    b64 = np.asarray(b_mat, dtype=np.float64)
    b_kn = b64.T if trans_b else b64  # (K, N)
    b_new = b_kn * s[:, None]
    c_new = None if c is None else beta * np.asarray(c, dtype=np.float64)
    if t is not None:
        shift = alpha * (t @ b_kn)  # (N,)
        c_new = shift if c_new is None else c_new + shift
    return (b_new.T if trans_b else b_new), c_new


def matmul_input(w: FloatArray, s: FloatArray, t: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Forward fold into X @ W, W: (..., K, N): W' = s[:, None] * W, bias = t @ W.

    The bias to add after the MatMul is shaped (..., 1, N) for a batched W,
    (N,) otherwise.
    """
    w64 = np.asarray(w, dtype=np.float64)
    bias = np.einsum("k,...kn->...n", t, w64)
    return w64 * s[:, None], (bias[..., None, :] if w64.ndim > 2 else bias)


def centre_tap(
    w: FloatArray, b: FloatArray | None, s: FloatArray, t: FloatArray, group: int
) -> tuple[FloatArray, FloatArray]:
    """A Conv that also adds ``s * x + t`` of its own input (the identity branch of a sum).

    W: (C, C/group, *kernel), odd kernel, stride 1, padded to keep the size
    ("same"). Its centre tap reads x at the output position itself, never a
    padded one, so adding s[c] at W[c, c mod (C/group), centre] adds s[c] x[c]
    to output channel c (channel c is in the group that reads input c), and
    b'[c] = b[c] + t[c]:

        conv(x; W', b') = conv(x; W, b) + s * x + t
    """
    w_new = np.array(w, dtype=np.float64)
    c_out, c_per_group = w_new.shape[0], w_new.shape[1]
    centre = tuple(k // 2 for k in w_new.shape[2:])
    channels = np.arange(c_out)
    w_new[(channels, channels % c_per_group, *centre)] += s
    return w_new, _f64(b, c_out) + t


def cast_exact_dtype(a: FloatArray, dtype: np.dtype) -> FloatArray | None:
    """Cast to the model's dtype, or None if a value does not fit (float16 overflow)."""
    with np.errstate(over="ignore"):
        out = np.asarray(a).astype(dtype)
    return out if np.isfinite(out).all() else None
