"""Property tests of the folding algebra against direct numpy evaluation (float64)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bnfold.folding import algebra
from bnfold.folding.affine import Affine, concat_extend
from bnfold.folding.refusal import Refusal

EXAMPLES = settings(max_examples=40, deadline=None)


def conv1d(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, group: int, pad: int, dilation: int = 1
) -> np.ndarray:
    """x (N, C, L), w (M, C/group, K) -> (N, M, L + 2 pad - dilation (K - 1))."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad)))
    m, cg, k = w.shape
    span = dilation * (k - 1) + 1
    out_len = x.shape[2] - span + 1
    y = np.zeros((x.shape[0], m, out_len))
    for o in range(m):
        g = o // (m // group)
        xs = x[:, g * cg : (g + 1) * cg]
        for i in range(out_len):
            y[:, o, i] = np.einsum("nck,ck->n", xs[:, :, i : i + span : dilation], w[o])
    return y + b[None, :, None]


def conv_transpose1d(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, group: int, stride: int
) -> np.ndarray:
    """x (N, C, L), w (C, M/group, K) -> (N, M, (L - 1) stride + K)."""
    c, mg, k = w.shape
    n, _, length = x.shape
    y = np.zeros((n, mg * group, (length - 1) * stride + k))
    for ci in range(c):
        g = ci // (c // group)
        for i in range(length):
            y[:, g * mg : (g + 1) * mg, i * stride : i * stride + k] += (
                x[:, ci, i][:, None, None] * w[ci][None]
            )
    return y + b[None, :, None]


def bn(y: np.ndarray, s: np.ndarray, t: np.ndarray, axis: int = 1) -> np.ndarray:
    shape = [1] * y.ndim
    shape[axis] = -1
    return y * s.reshape(shape) + t.reshape(shape)


def vec(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    return rng.normal(0.0, scale, n)


@EXAMPLES
@given(c=st.integers(1, 6), eps=st.sampled_from([1e-5, 1e-3, 0.0]), seed=st.integers(0, 2**16))
def test_bn_scale_shift_is_the_bn(c, eps, seed):
    rng = np.random.default_rng(seed)
    gamma, beta, mean = vec(rng, c), vec(rng, c), vec(rng, c)
    var = rng.uniform(1e-6, 3.0, c)  # var near 0 included
    x = rng.normal(size=(4, c))
    s, t = algebra.bn_scale_shift(gamma, beta, mean, var, eps)
    np.testing.assert_allclose(
        x * s + t, (x - mean) / np.sqrt(var + eps) * gamma + beta, rtol=1e-9, atol=1e-9
    )


@EXAMPLES
@given(
    groups=st.integers(1, 3),
    cg=st.integers(1, 3),
    mg=st.integers(1, 3),
    k=st.integers(1, 3),
    pad=st.integers(0, 1),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv_backward_and_forward(groups, cg, mg, k, pad, bias, seed):
    rng = np.random.default_rng(seed)
    c, m = cg * groups, mg * groups
    w = rng.normal(size=(m, cg, k))
    b = vec(rng, m) if bias else None
    x = rng.normal(size=(2, c, 5))
    b0 = np.zeros(m) if b is None else b
    # backward: BN(conv(x)) == conv'(x)
    s, t = vec(rng, m), vec(rng, m)
    w2, b2 = algebra.conv_output(w, b, s, t)
    np.testing.assert_allclose(
        conv1d(x, w2, b2, groups, pad), bn(conv1d(x, w, b0, groups, pad), s, t), atol=1e-9
    )
    # forward: conv(BN(x)) == conv'(x); with padding only the scale folds
    s, t = vec(rng, c), vec(rng, c)
    w3, b3 = algebra.conv_input(w, b, s, None if pad else t, groups)
    inner = bn(x, s, np.zeros(c) if pad else t)
    np.testing.assert_allclose(
        conv1d(x, w3, b3, groups, pad), conv1d(inner, w, b0, groups, pad), atol=1e-9
    )


@EXAMPLES
@given(
    groups=st.integers(1, 3),
    cg=st.integers(1, 3),
    mg=st.integers(1, 3),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_convtranspose_backward_and_forward(groups, cg, mg, k, stride, seed):
    rng = np.random.default_rng(seed)
    c, m = cg * groups, mg * groups
    w = rng.normal(size=(c, mg, k))
    b = vec(rng, m)
    x = rng.normal(size=(2, c, 4))
    s, t = vec(rng, m), vec(rng, m)
    w2, b2 = algebra.convtranspose_output(w, b, s, t, groups)
    np.testing.assert_allclose(
        conv_transpose1d(x, w2, b2, groups, stride),
        bn(conv_transpose1d(x, w, b, groups, stride), s, t),
        atol=1e-9,
    )
    s, t = vec(rng, c), vec(rng, c)
    one_to_one = k == 1 and stride == 1
    w3, b3 = algebra.convtranspose_input(w, b, s, t if one_to_one else None, groups)
    inner = bn(x, s, t if one_to_one else np.zeros(c))
    np.testing.assert_allclose(
        conv_transpose1d(x, w3, b3, groups, stride),
        conv_transpose1d(inner, w, b, groups, stride),
        atol=1e-9,
    )


@EXAMPLES
@given(
    k=st.integers(1, 5),
    n=st.integers(1, 5),
    trans_b=st.booleans(),
    with_c=st.booleans(),
    alpha=st.sampled_from([1.0, 0.5, -2.0]),
    beta=st.sampled_from([1.0, 0.25, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_gemm_backward_and_forward(k, n, trans_b, with_c, alpha, beta, seed):
    rng = np.random.default_rng(seed)
    b_mat = rng.normal(size=(n, k) if trans_b else (k, n))
    c = vec(rng, n) if with_c else None
    a = rng.normal(size=(3, k))

    def gemm(a, b_mat, c, beta_):
        bkn = b_mat.T if trans_b else b_mat
        return alpha * a @ bkn + (0 if c is None else beta_ * c)

    s, t = vec(rng, n), vec(rng, n)
    b2, c2 = algebra.gemm_output(b_mat, c, s, t, trans_b=trans_b, beta=beta)
    np.testing.assert_allclose(gemm(a, b2, c2, 1.0), gemm(a, b_mat, c, beta) * s + t, atol=1e-9)
    s, t = vec(rng, k), vec(rng, k)
    b3, c3 = algebra.gemm_input(b_mat, c, s, t, trans_b=trans_b, alpha=alpha, beta=beta)
    np.testing.assert_allclose(gemm(a, b3, c3, 1.0), gemm(a * s + t, b_mat, c, beta), atol=1e-9)


@EXAMPLES
@given(batch_w=st.booleans(), k=st.integers(1, 4), n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_matmul_backward_and_forward(batch_w, k, n, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(2, k, n) if batch_w else (k, n))
    x = rng.normal(size=(2, 3, k))
    s, t = vec(rng, n), vec(rng, n)
    np.testing.assert_allclose(x @ algebra.matmul_output(w, s) + t, (x @ w) * s + t, atol=1e-9)
    s, t = vec(rng, k), vec(rng, k)
    w2, bias = algebra.matmul_input(w, s, t)
    np.testing.assert_allclose(x @ w2 + bias, (x * s + t) @ w, atol=1e-9)


@EXAMPLES
@given(c=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_compose_and_sign_split(c, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, c, 3))
    a = Affine.channel(vec(rng, c), vec(rng, c), 3, 1)
    b = Affine.channel(vec(rng, c), vec(rng, c), 3, 1)
    np.testing.assert_allclose(
        x * a.then(b).s + a.then(b).t, (x * a.s + a.t) * b.s + b.t, atol=1e-9
    )
    sign, rest = a.sign_split()
    assert set(np.unique(sign.s)) <= {-1.0, 1.0} and np.all(rest.s >= 0)
    np.testing.assert_allclose(rest.then(sign).s, a.s)
    np.testing.assert_allclose(rest.then(sign).t, a.t)


@EXAMPLES
@given(c=st.integers(1, 4), h=st.integers(1, 3), w=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_affine_moves_with_transpose_reshape_concat(c, h, w, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, c, h, w))
    a = Affine.channel(vec(rng, c), vec(rng, c), 4, 1)

    def apply(aff: Affine, v: np.ndarray) -> np.ndarray:
        return v * aff.s + aff.t

    perm = [0, 2, 3, 1]
    np.testing.assert_allclose(
        apply(a.transpose(perm), x.transpose(perm)), apply(a, x).transpose(perm)
    )
    flat = a.reshape(("N", c, h, w), ("N", c * h * w))
    assert isinstance(flat, Affine)
    np.testing.assert_allclose(apply(flat, x.reshape(2, -1)), apply(a, x).reshape(2, -1))
    other = rng.normal(size=(2, 2, h, w))
    ext = concat_extend(a, 1, [2, c], 1)
    np.testing.assert_allclose(
        apply(ext, np.concatenate([other, x], 1)), np.concatenate([other, apply(a, x)], 1)
    )
    np.testing.assert_allclose(apply(ext.take(1, 2, 2 + c), x), apply(a, x))


@EXAMPLES
@given(
    groups=st.sampled_from([1, 2, 4]),
    k=st.sampled_from([1, 3, 5]),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_centre_tap_adds_the_identity_branch(groups, k, dilation, bias, seed):
    """conv(x; W', b') = conv(x; W, b) + s x + t for a size-keeping, stride-1, odd kernel."""
    rng = np.random.default_rng(seed)
    c = 4
    w = rng.normal(size=(c, c // groups, k))
    b = vec(rng, c) if bias else None
    x = rng.normal(size=(2, c, 7))
    s, t = vec(rng, c), vec(rng, c)
    pad = dilation * (k - 1) // 2
    w2, b2 = algebra.centre_tap(w, b, s, t, groups)
    b0 = np.zeros(c) if b is None else b
    np.testing.assert_allclose(
        conv1d(x, w2, b2, groups, pad, dilation),
        conv1d(x, w, b0, groups, pad, dilation) + bn(x, s, t),
        atol=1e-9,
    )


@EXAMPLES
@given(
    b=st.integers(1, 3),
    n=st.integers(1, 4),
    c=st.integers(1, 4),
    split=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_affine_moves_across_reshapes_of_the_leading_axes(b, n, c, split, seed):
    """[B, N, C] <-> [B*N, C] with B dynamic: a map along C moves exactly, both ways."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, n, c))
    tokens: tuple[object, ...] = ("B", n, c)
    flat: tuple[object, ...] = (None, c)

    def apply(aff: Affine, v: np.ndarray) -> np.ndarray:
        return v * aff.s + aff.t

    if split:  # the map on [B*N, C], moved to [B, N, C]
        a = Affine.channel(vec(rng, c), vec(rng, c), 2, 1)
        moved = a.reshape(flat, tokens)  # type: ignore[arg-type]
        assert isinstance(moved, Affine)
        np.testing.assert_allclose(
            apply(moved, x), apply(a, x.reshape(-1, c)).reshape(b, n, c), atol=1e-12
        )
    else:
        a = Affine.channel(vec(rng, c), vec(rng, c), 3, 2)
        moved = a.reshape(tokens, flat)  # type: ignore[arg-type]
        assert isinstance(moved, Affine)
        np.testing.assert_allclose(
            apply(moved, x.reshape(-1, c)), apply(a, x).reshape(-1, c), atol=1e-12
        )
    # a map along N cannot cross a reshape that merges N into the dynamic batch axis
    along_n = Affine.channel(vec(rng, n) + 3.0, vec(rng, n), 3, 1)
    if n > 1:
        assert isinstance(along_n.reshape(tokens, flat), Refusal)  # type: ignore[arg-type]


@EXAMPLES
@given(
    c=st.integers(1, 4),
    axes=st.sampled_from([(2, 3), (2,), (3,), (0, 2, 3)]),
    keepdims=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_mean_commutes_with_a_map_constant_along_the_reduced_axes(c, axes, keepdims, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, c, 3, 4))
    a = Affine.channel(vec(rng, c), vec(rng, c), 4, 1)
    out = a if keepdims else a.squeeze(axes)
    reduced = x.mean(axis=axes, keepdims=keepdims)
    np.testing.assert_allclose(
        (x * a.s + a.t).mean(axis=axes, keepdims=keepdims), reduced * out.s + out.t, atol=1e-12
    )
    if not keepdims:  # and back: the map on the output, with the reduced axes restored
        back = out.unsqueeze(axes)
        np.testing.assert_allclose(back.s, a.s)
        np.testing.assert_allclose(back.t, a.t)


@EXAMPLES
@given(
    b=st.integers(1, 3),
    n=st.integers(1, 4),
    k=st.integers(1, 4),
    d=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_token_matmul_as_a_gemm_on_the_flattened_tensor(b, n, k, d, seed):
    """reshape(x @ W, [-1, D]) * s + t = reshape(x, [-1, K]) @ (W s) + t: one Gemm."""
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=(b, n, k)), rng.normal(size=(k, d))
    s, t = vec(rng, d), vec(rng, d)
    gemm = x.reshape(-1, k) @ algebra.matmul_output(w, s) + t
    np.testing.assert_allclose(gemm, (x @ w).reshape(-1, d) * s + t, atol=1e-9)
    s, t = vec(rng, k), vec(rng, k)  # and forward: the map on x, the bias t @ W
    w2, bias = algebra.matmul_input(w, s, t)
    np.testing.assert_allclose(
        x.reshape(-1, k) @ w2 + bias, ((x * s + t) @ w).reshape(-1, d), atol=1e-9
    )


def test_float16_cast_detects_overflow():
    assert algebra.cast_exact_dtype(np.array([70000.0]), np.dtype(np.float16)) is None
    out = algebra.cast_exact_dtype(np.array([1.5, -2.0]), np.dtype(np.float16))
    assert out is not None and out.dtype == np.float16 and out.tolist() == [1.5, -2.0]


def test_affine_cost_says_what_it_lowers_to():
    c = 3
    assert Affine.identity(4).cost() == (0, 0, 0)
    assert Affine.channel(np.full(c, 2.0), np.zeros(c), 4, 1).cost() == (1, 1, 0)  # Mul
    assert Affine.channel(np.ones(c), np.ones(c), 4, 1).cost() == (1, 1, 0)  # Add
    assert Affine.channel(np.arange(1.0, 4.0), np.ones(c), 4, 1).cost() == (1, 2, 0)  # BN
    assert Affine.channel(np.arange(1.0, 4.0), np.ones(c), 4, 3).cost() == (2, 2, 0)  # NHWC
