"""Tile reshaping helpers shared by the kernels: split a tile's last axis into its columns, and back.

Triton splits only a last axis of size 2, so a last axis of 4 or 8 is reshaped into 2 x 2 (x 2)
and split level by level; these helpers write that tree once.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def split4(x):
    """[B, 4] -> its four columns."""
    a, b = tl.split(tl.reshape(x, [x.shape[0], 2, 2]))
    w0, w2 = tl.split(a)
    w1, w3 = tl.split(b)
    return w0, w1, w2, w3


@triton.jit
def join4(w0, w1, w2, w3):
    """Four [B] tensors -> [B, 4] with them as columns (inverse of ``split4``)."""
    return tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [w0.shape[0], 4])


@triton.jit
def split8(x):
    """[A, B, 8] -> its eight [A, B] slices along the last axis (element k = 4a + 2b + c)."""
    x = tl.reshape(x, [x.shape[0], x.shape[1], 2, 2, 2])
    e, o = tl.split(x)  # c = 0 / 1
    e0, e1 = tl.split(e)  # b = 0 / 1
    o0, o1 = tl.split(o)
    x0, x4 = tl.split(e0)  # a = 0 / 1
    x2, x6 = tl.split(e1)
    x1, x5 = tl.split(o0)
    x3, x7 = tl.split(o1)
    return x0, x1, x2, x3, x4, x5, x6, x7
