"""An elementwise affine map y = s * x + t on one tensor, and how it moves.

``s`` and ``t`` are float64 arrays with the tensor's rank, each dimension
either 1 (constant along that axis) or the tensor's size there: a BN on NCHW
is ``s.shape == (1, C, 1, 1)``; the same BN seen after a Flatten is
``(1, C*H*W)`` with every value repeated H*W times. Keeping the map this way
lets Transpose, Reshape, Flatten and Concat move it exactly and lets a rule
ask "does it vary along the channel axis only?" with :meth:`Affine.vectors`.

The map's cost is what it lowers to if it stays in the graph (see
:meth:`Affine.cost` and ``cost.py``); the planner minimises it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bnfold.folding.cost import BATCHNORM, MUL_ADD, ONE_OP, ZERO, Cost
from bnfold.folding.refusal import Refusal

Dim = int | str | None
Shape = tuple[Dim, ...]


def _minimal(a: np.ndarray) -> np.ndarray:
    """Collapse every axis along which ``a`` is constant to size 1."""
    for axis in range(a.ndim):
        if a.shape[axis] > 1:
            first = np.take(a, [0], axis=axis)
            if np.array_equal(a, np.broadcast_to(first, a.shape)):
                a = first
    return a


@dataclass(frozen=True, eq=False)
class Affine:
    """y = s * x + t with s, t of the tensor's rank (broadcast dims are 1)."""

    s: np.ndarray
    t: np.ndarray

    @staticmethod
    def make(s: np.ndarray, t: np.ndarray) -> Affine:
        s64 = np.asarray(s, dtype=np.float64)
        t64 = np.asarray(t, dtype=np.float64)
        rank = max(s64.ndim, t64.ndim)
        s64 = s64.reshape((1,) * (rank - s64.ndim) + s64.shape)
        t64 = t64.reshape((1,) * (rank - t64.ndim) + t64.shape)
        return Affine(_minimal(s64), _minimal(t64))

    @staticmethod
    def channel(s: np.ndarray, t: np.ndarray, rank: int, axis: int) -> Affine:
        """Per-channel vectors (C,) along ``axis`` of a rank-``rank`` tensor."""
        shape = [1] * rank
        shape[axis] = -1
        return Affine.make(np.reshape(s, shape), np.reshape(t, shape))

    @staticmethod
    def identity(rank: int) -> Affine:
        return Affine(np.ones((1,) * rank), np.zeros((1,) * rank))

    @property
    def rank(self) -> int:
        return self.s.ndim

    def varying_axes(self) -> set[int]:
        return {a for a in range(self.rank) if self.s.shape[a] > 1 or self.t.shape[a] > 1}

    @property
    def has_scale(self) -> bool:
        return not bool(np.all(self.s == 1.0))

    @property
    def has_shift(self) -> bool:
        return bool(np.any(self.t != 0.0))

    @property
    def is_identity(self) -> bool:
        return not (self.has_scale or self.has_shift)

    @property
    def positive(self) -> bool:
        return bool(np.all(self.s > 0))

    def n_negative(self) -> int:
        return int(np.sum(self.s < 0))

    def vectors(self, axis: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(s, t) as length-``n`` vectors if the map varies along ``axis`` only."""
        axis %= self.rank
        if not self.varying_axes() <= {axis}:
            return None
        s = np.broadcast_to(self.s.reshape(-1), (n,)) if self.s.size in (1, n) else None
        t = np.broadcast_to(self.t.reshape(-1), (n,)) if self.t.size in (1, n) else None
        if s is None or t is None:
            return None
        return np.array(s, dtype=np.float64), np.array(t, dtype=np.float64)

    def then(self, after: Affine) -> Affine:
        """``after`` applied to the output of ``self``."""
        return Affine.make(after.s * self.s, after.s * self.t + after.t)

    def scale_only(self) -> Affine:
        return Affine.make(self.s, np.zeros_like(self.t))

    def shift_only(self) -> Affine:
        return Affine.make(np.ones_like(self.s), self.t)

    def sign_split(self) -> tuple[Affine, Affine]:
        """(sign, rest) with rest.then(sign) == self and rest.s >= 0.

        ``sign`` is a pure +-1 scale; rest = (|s|, sign * t).
        """
        sign = np.where(self.s < 0, -1.0, 1.0)
        return Affine.make(sign, np.zeros_like(sign)), Affine.make(np.abs(self.s), sign * self.t)

    def transpose(self, perm: Sequence[int]) -> Affine:
        return Affine(np.transpose(self.s, perm), np.transpose(self.t, perm))

    def reshape(self, src: Shape, dst: Shape) -> Affine | Refusal:
        """The same map on the tensor reshaped from ``src`` to ``dst``.

        A row-major reshape keeps every element's offset inside a trailing
        block of axes whose sizes multiply to the same number in ``src`` and
        ``dst`` (the element count is kept, so the leading axes multiply to
        the same number too). A map constant along the axes in front of such
        a block depends on that offset only, so it moves exactly: the block's
        values reshaped, constant along the leading axes of ``dst``. The
        leading axes may be dynamic and may merge or split (batch and tokens:
        ``[B, N, C] -> [B*N, C]``); the block must be static and hold every
        axis the map varies along. A refusal says when no such block exists.
        """
        block = _trailing_block(src, dst, min(self.varying_axes(), default=len(src)))
        if block is None:
            return Refusal(
                f"reshape {list(src)} -> {list(dst)} does not keep the leading axis apart "
                "from the static axes the map varies along"
            )
        i, j = block
        tail_src = tuple(int(d) for d in src[i:])  # type: ignore[arg-type]
        tail_dst = tuple(int(d) for d in dst[j:])  # type: ignore[arg-type]
        lead = (1,) * j

        def move(a: np.ndarray) -> np.ndarray:
            return np.broadcast_to(a.reshape(a.shape[i:]), tail_src).reshape(lead + tail_dst)

        return Affine.make(move(self.s), move(self.t))

    def squeeze(self, axes: Sequence[int]) -> Affine:
        """The map after a reduction that drops ``axes`` (it must be constant along them)."""
        if not axes:
            return self
        return Affine(np.squeeze(self.s, tuple(axes)), np.squeeze(self.t, tuple(axes)))

    def unsqueeze(self, axes: Sequence[int]) -> Affine:
        """The map before such a reduction: size 1 along ``axes`` (positions in the result)."""
        if not axes:
            return self
        return Affine(np.expand_dims(self.s, tuple(axes)), np.expand_dims(self.t, tuple(axes)))

    def take(self, axis: int, start: int, stop: int) -> Affine:
        """The map on slice [start:stop) along ``axis`` (a Concat input)."""

        def part(a: np.ndarray) -> np.ndarray:
            return a if a.shape[axis] == 1 else np.take(a, range(start, stop), axis=axis)

        return Affine.make(part(self.s), part(self.t))

    def cost(self) -> Cost:
        """What the map lowers to if it stays: nothing, Mul, Add, BN or Mul+Add."""
        if self.is_identity:
            return ZERO
        if not self.has_shift or not self.has_scale:
            return ONE_OP
        if self.rank >= 2 and self.varying_axes() == {1}:
            return BATCHNORM
        return MUL_ADD


def _static(dims: Sequence[object]) -> bool:
    return all(isinstance(d, int) and not isinstance(d, bool) for d in dims)


def _trailing_block(src: Shape, dst: Shape, first: int) -> tuple[int, int] | None:
    """(i, j): ``src[i:]`` and ``dst[j:]`` static with the same product, ``i <= first``."""
    for i in range(min(first, len(src)), -1, -1):
        if not _static(src[i:]):
            return None  # a smaller i keeps the dynamic dim in the block
        n = int(np.prod([int(d) for d in src[i:]], dtype=np.int64))  # type: ignore[arg-type]
        if n == 0:
            return None
        for j in range(len(dst), -1, -1):
            if not _static(dst[j:]):
                break
            p = int(np.prod([int(d) for d in dst[j:]], dtype=np.int64))  # type: ignore[arg-type]
            if p == n:
                return i, j
            if p > n:
                break
    return None


def concat_extend(aff: Affine, axis: int, sizes: Sequence[int], index: int) -> Affine:
    """Map on a Concat output that applies ``aff`` to input ``index``, identity elsewhere."""
    s_parts, t_parts = [], []
    for i, n in enumerate(sizes):
        if i == index:
            shape = list(np.broadcast_shapes(aff.s.shape, aff.t.shape))
            shape[axis] = n
            s_parts.append(np.broadcast_to(aff.s, shape))
            t_parts.append(np.broadcast_to(aff.t, shape))
        else:
            shape = list(np.broadcast_shapes(aff.s.shape, aff.t.shape))
            shape[axis] = n
            s_parts.append(np.ones(shape))
            t_parts.append(np.zeros(shape))
    return Affine.make(np.concatenate(s_parts, axis=axis), np.concatenate(t_parts, axis=axis))
