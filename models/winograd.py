"""Winograd F(m x m, 3 x 3) convolution as plain graph ops.

The transform matrices come from the Toom-Cook construction: A^T and G are Vandermonde rows at the
interpolation points (plus the point at infinity), and B^T is solved from the defining identity
``sum_j A^T[i,j] G[j,k] B^T[j,t] = [t == i + k]`` in float64, then checked to be exact.
Points are 0, +-1, +-2, +-1/2 (the usual choice that keeps F(6,3) usable in fp32).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

R = 3  # kernel size
_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)


@functools.lru_cache(maxsize=None)
def matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T [m, n], G [n, 3], B^T [n, n]) for output tile m, input tile n = m + 2."""
    n = m + R - 1
    pts = _POINTS[: n - 1]
    if len(pts) != n - 1:
        raise ValueError(f"Winograd tile m={m} needs {n - 1} points; only {len(_POINTS)} are defined")
    at = np.zeros((m, n))
    g = np.zeros((n, R))
    for j, p in enumerate(pts):
        at[:, j] = [p**i for i in range(m)]
        g[j, :] = [p**k for k in range(R)]
    at[m - 1, n - 1] = 1.0
    g[n - 1, R - 1] = 1.0
    # Solve for B^T column by column of the input index t: for each (i, k) pair the identity is
    # linear in the unknowns B^T[:, t].
    rows = np.array([at[i, :] * g[:, k] for i in range(m) for k in range(R)])  # [m*R, n]
    bt = np.zeros((n, n))
    for t in range(n):
        rhs = np.array([1.0 if t == i + k else 0.0 for i in range(m) for k in range(R)])
        sol, *_ = np.linalg.lstsq(rows, rhs, rcond=None)
        bt[:, t] = sol
    residual = np.abs(np.einsum("ij,jk,jt->ikt", at, g, bt) - _target(m, n)).max()
    if residual > 1e-9:
        raise ArithmeticError(f"Winograd F({m},3) construction is inexact (residual {residual:.2e})")
    return at, g, bt


def _target(m: int, n: int) -> np.ndarray:
    t = np.zeros((m, R, n))
    for i in range(m):
        for k in range(R):
            t[i, k, i + k] = 1.0
    return t


#: columns of the kernel matrix transformed per float64 product in :func:`transform_weight`
TRANSFORM_COLUMNS = 1 << 18


def transform_weight(weight: torch.Tensor, m: int) -> torch.Tensor:
    """Kernel [Cout, Cin, 3, 3] -> Winograd-domain weights U [n*n, Cin, Cout] (float64 math).

    U[(a, b), i, o] = sum_kl G[a, k] G[b, l] w[o, i, k, l]: one product of the [n*n, 9] matrix kron(G, G) with the
    kernels as a [9, Cin*Cout] matrix, whose columns come out in U's order. Done in float64 over column blocks
    and rounded once: a whole-tensor float64 einsum and its reshapes took 26 s of the full-size ``cpu`` UNet's
    build (47 kernels, 2026-12-07), mostly passes over multi-GB float64 temporaries."""
    _, g, _ = matrices(m)
    n = g.shape[0]
    gg = torch.from_numpy(np.kron(g, g))  # row a*n+b, column k*3+l
    cout, cin = weight.shape[:2]
    w = weight.detach().permute(2, 3, 1, 0).reshape(R * R, cin * cout)  # [9, Cin*Cout], column i*Cout+o
    u = torch.empty(n * n, cin * cout, dtype=weight.dtype)
    for s in range(0, cin * cout, TRANSFORM_COLUMNS):
        u[:, s:s + TRANSFORM_COLUMNS] = gg @ w[:, s:s + TRANSFORM_COLUMNS].to(torch.float64)
    return u.reshape(n * n, cin, cout)


def transform_kernels(m: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Constants of the input transform, a conv kernel [n*n, 1, n, n], and of the output transform, a matrix
    [m*m, n*n] that maps the n*n Winograd-domain products of a tile to its m*m outputs."""
    at, _, bt = matrices(m)
    n = m + R - 1
    # Input transform: output channel (a, b) of a 1-channel conv computes sum_uv BT[a,u] BT[b,v] d[u,v].
    bker = np.einsum("au,bv->abuv", bt, bt).reshape(n * n, 1, n, n)
    # Output transform: Y[i, j] = sum_ab AT[i,a] AT[j,b] M[a,b], one matrix over all tiles and channels.
    amat = np.einsum("ia,jb->ijab", at, at).reshape(m * m, n * n)
    return torch.from_numpy(bker).to(dtype), torch.from_numpy(amat).to(dtype)


#: Above this many bytes of Winograd-domain input (n*n tile positions x tiles x channels, fp32) the input
#: transform's layout change is one transpose instead of two. The single one has the poorer access pattern
#: (both innermost axes move) and loses while the tensor stays in cache; past it, one pass over memory beats
#: two. This project's host (2-core Xeon, 2 MiB L2 per core), 2026-11-22, F(4,3): 320 channels at 64x64,
#: batch 2 (24 MB), 36.4 vs 30.9 ms with it; 128 channels at 512x512 (302 MB) 383 vs 425 ms; the full-size
#: VAE decoder (F(4,3), 19-604 MB per conv) 8.2-8.6 vs 8.9-10.1 s with the threshold here.
FOLD_INPUT_BYTES = 64 << 20


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, bker: torch.Tensor, amat: torch.Tensor,
            m: int, fold_input: bool | None = None) -> torch.Tensor:
    """Same result as ``F.conv2d(x, w, bias, stride=1, padding=1)`` for the w that ``u`` came from.

    The output transform is one matrix product over every tile and channel at once, not a stride-m transposed
    convolution: XNNPACK runs the latter as a 36 -> 1 channel deconvolution, which took 37 ms of an 86 ms
    320-channel 64x64 F(4,3) conv on this project's host; with the product the conv takes 39 ms (104 ms direct).

    Layout (the converter keeps NCHW tensors and wraps NHWC kernels in transposes): the product comes out
    tile-position-major with channels innermost, [m, m, nb, th, tw, cout]. It is put into NHWC order first
    (channels stay innermost: a copy of whole channel rows), the bias is added there, and one plain
    NHWC -> NCHW transpose follows; going to NCHW in one 6-D transpose moved 4-float runs and took 80 ms of a
    330 ms 128-channel 512x512 conv. ``fold_input`` (default: by ``FOLD_INPUT_BYTES``) makes the input
    transform's layout change one transpose: the depthwise conv's NHWC result is taken as it is (the
    permute cancels the converter's transpose) and permuted once.
    """
    nb, cin, h, w = x.shape
    n = m + R - 1
    th, tw = -(-h // m), -(-w // m)
    cout = u.shape[-1]
    xp = F.pad(x, (1, tw * m + 1 - w, 1, th * m + 1 - h))
    v = F.conv2d(xp.reshape(nb * cin, 1, th * m + 2, tw * m + 2), bker, stride=m)  # [nb*cin, n*n, th, tw]
    if fold_input is None:
        fold_input = n * n * nb * th * tw * cin * 4 > FOLD_INPUT_BYTES
    if fold_input:
        v = v.permute(0, 2, 3, 1).reshape(nb, cin, th * tw, n * n).permute(3, 0, 2, 1)
    else:
        v = v.reshape(nb, cin, n * n, th * tw).permute(2, 0, 3, 1)
    mm = torch.bmm(v.reshape(n * n, nb * th * tw, cin), u)  # [n*n, nb*th*tw, cout]
    y = torch.matmul(amat, mm.reshape(n * n, nb * th * tw * cout))  # [m*m, nb*th*tw*cout]
    y = y.reshape(m, m, nb, th, tw, cout).permute(2, 3, 0, 4, 1, 5).reshape(nb, th * m, tw * m, cout)
    if bias is not None:
        y = y + bias
    y = y.permute(0, 3, 1, 2)
    if th * m != h or tw * m != w:
        y = y[:, :, :h, :w]
    return y


def multiplies_per_output(m: int) -> float:
    """Multiplications per output pixel and channel pair, relative to direct 3x3 (9)."""
    n = m + R - 1
    return n * n / (m * m)
