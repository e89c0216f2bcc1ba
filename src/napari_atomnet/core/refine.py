"""Sub-pixel refinement of atom columns by 2D Gaussian fits, all peaks at once.

Every peak is fitted by its own 2D Gaussian plus a constant background inside a square window
around it, and all the fits run together as one batched (vectorized) Levenberg–Marquardt in numpy:
the windows are gathered into an ``(n, k²)`` stack (one stack per window size), the parameters
into an ``(n, P)`` array, and each iteration evaluates every model, forms every peak's damped
normal equations and solves all of them at once.  Damping, step acceptance and convergence are
decided per peak; converged peaks drop out of the working set.  There is no Python loop over
peaks.

Model
-----
``m(r, c) = A * exp(-Q / 2) + B`` with ``Q = a dy² + 2 b dy dx + c dx²``, ``dy = r - y`` and
``dx = c - x`` (pixel-centre convention: a peak centred on pixel (10, 20) is at y=10.0, x=20.0).
The shape is fitted as the inverse covariance ("precision") matrix ``[[a, b], [b, c]]`` rather
than as ``(sigma_y, sigma_x, theta)``: the model is smooth in ``(a, b, c)``, the Jacobian is a
Gaussian times a polynomial, and there is no degenerate angle when the peak is round (``theta`` is
undefined for ``sigma_y == sigma_x``, which makes the angle parametrisation singular exactly where
most atom columns are).  Steps that leave the positive-definite cone (or give a width outside
``[0.1, 10 h]`` px) are rejected and the damping raised.  ``sigma_y, sigma_x, theta`` are computed
from ``(a, b, c)`` at the end, with the same convention as
:func:`napari_atomnet.synth.render_gaussians` (``theta`` rotates the Gaussian's y axis towards
+x) and ``theta`` in ``[-pi/4, pi/4)`` so that ``sigma_y`` is the width along the axis closest to
the image rows.  The isotropic model fits ``Q = a (dy² + dx²)``.

Neighbours
----------
Pass 1 fits every peak alone.  Later passes subtract the other peaks' fitted Gaussians from each
window and refit (a block-Jacobi iteration towards the joint fit of all peaks), and fit groups of
peaks closer than 3.5 sigma (up to 4, e.g. dumbbells) jointly as a sum of Gaussians on one
background: for such close pairs the subtraction iteration converges too slowly, while the joint
fit reaches the Cramér–Rao bound of the two-peak model.  A group whose joint fit fails (usually a
spurious detection next to a real column, which then shares its peak) loses its failing member
and is refitted.

Speed
-----
All pieces of the normal equations are Gaussian-weighted polynomial moments of the window:
``J^T W J = C K C^T`` with per-peak polynomial coefficients ``C`` and moments ``K`` of ``w g²``
up to degree 4.  The moments are one matrix product of the window stack with the window's 15
monomials (BLAS), and the model is one product of per-peak quadratic coefficients with 6
monomials plus one ``exp``, so an iteration costs about fifteen float32 array operations per
pixel; the small systems are solved by a batched Cholesky factorisation written out over the
batch axis.  Windows are float32 (the positions come out to ~1e-5 px on noise-free data), the
parameters, moments and solves float64.  Buffers are preallocated per block (fresh temporaries
cost more in page faults than in arithmetic), a block's window stack is ~1 MB so that the dozen
passes over it per iteration stay in the CPU cache (8 MB blocks were 25 % slower in all), and
the matrix products are split into blocks small enough that OpenBLAS stays single-threaded (its
threads made them up to 40x slower on a shared 2-core machine).  Passes before the last stop at
a looser tolerance (0.05 px): they only place the neighbour models the last pass subtracts.

Weights
-------
``weights="poisson"`` is iteratively re-weighted least squares with weights ``1 / max(model, 1)``:
at convergence this solves the Poisson maximum-likelihood equations, which reach the Cramér–Rao
bound at low dose where plain least squares does not (measured: RMSE / CRLB 1.0–1.06 at 20, 50
and 500 counts per peak, against 1.05–1.35 for uniform weights).  On images that are not in counts
(values below 1) the weights are all 1 and it is plain least squares.  ``weights="uniform"`` is
ordinary least squares.  The default, ``"auto"``, is ``"poisson"`` unless the image has negative
values (normalised or background-subtracted: not Poisson), then ``"uniform"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = ["error_text", "fit_gaussian_at", "fit_gaussians", "median_standard_error"]

STATUSES = ("ok", "diverged", "moved_too_far", "bad_width", "low_amplitude", "max_iter", "merged")
_OK, _DIVERGED, _MOVED, _BAD_WIDTH, _LOW_AMP, _MAX_ITER, _MERGED = range(7)

COLUMNS = [
    "y",
    "x",
    "amplitude",
    "amplitude_snr",
    "y_err",
    "x_err",
    "sigma_y",
    "sigma_x",
    "theta",
    "background",
    "fit_ok",
    "fit_status",
    "y_init",
    "x_init",
    "n_iter",
    "residual_rms",
    "merged_into",
]

_CHUNK = 2048  # peaks per block: larger blocks amortise the calls ...
_BLOCK_PIXELS = 262_144  # ... but a block's (n, k²) float32 buffers stay within ~1 MB (cache)
_LAMBDA0 = 1e-3
_LAMBDA_MAX = 1e7
_POISSON_FLOOR = 1.0
_MAX_CLUSTER = 4  # largest group of close peaks fitted jointly
_MAX_CLUSTER_HALF = 25  # largest half-width of a joint window
_CLUSTER_ITER_FACTOR = 2  # joint fits of close groups converge more slowly
_FADED = 0.02  # a group member below this fraction of the largest amplitude is frozen
_EARLY_PASS_TOL = 0.05  # px (relative for the other parameters) in passes before the last
_FIRST_PASS_WINDOW = 0.8  # the first pass fits on windows this fraction as wide (_first_pass_half)


@dataclass(frozen=True)
class _Cfg:
    isotropic: bool
    fit_background: bool
    poisson: bool
    max_iter: int
    tol: float
    members: int = 1  # Gaussians per window (> 1: a cluster fitted jointly)

    @property
    def n_shape(self) -> int:
        return 1 if self.isotropic else 3

    @property
    def n_peak(self) -> int:
        """Parameters of one Gaussian: A, y, x and the shape."""
        return 3 + self.n_shape

    @property
    def n_params(self) -> int:
        return self.members * self.n_peak + int(self.fit_background)

    @property
    def i_bg(self) -> int:
        return self.members * self.n_peak

    def peak(self, p: NDArray, k: int) -> NDArray:
        """Parameters (A, y, x, shape...) of member ``k``: a view into ``p``."""
        return p[:, k * self.n_peak : (k + 1) * self.n_peak]


# --------------------------------------------------------------------------------------------
# batched linear algebra
# --------------------------------------------------------------------------------------------
def _chol_solve(a: NDArray, b: NDArray) -> tuple[NDArray, NDArray]:
    """Solve ``a x = b`` for a batch of small symmetric positive-definite systems.

    ``a`` is (n, P, P) and ``b`` (n, P) or (n, P, R).  The Cholesky factorisation is written out
    over the batch axis, which is as fast as ``np.linalg.solve`` on many tiny matrices and
    reports a non-positive-definite system per item instead of raising for the whole batch.
    Returns ``(x, ok)``; rows with ``ok`` False hold zeros.
    """
    n, p, _ = a.shape
    vec = b.ndim == 2
    bb = b[..., None] if vec else b
    at = np.ascontiguousarray(np.moveaxis(a, 0, -1))  # (P, P, n), each entry a contiguous row
    low = np.zeros((p, p, n))
    ok = np.ones(n, dtype=bool)
    for j in range(p):
        s = at[j, j] - np.einsum("kn,kn->n", low[j, :j], low[j, :j]) if j else at[j, j].copy()
        ok &= s > 0
        d = np.sqrt(np.where(s > 0, s, 1.0))
        low[j, j] = d
        if j + 1 < p:
            low[j + 1 :, j] = (
                at[j + 1 :, j] - np.einsum("ikn,kn->in", low[j + 1 :, :j], low[j, :j])
            ) / d
    rhs = np.ascontiguousarray(np.moveaxis(bb, 0, -1))  # (P, R, n)
    z = np.empty_like(rhs)
    for i in range(p):
        z[i] = (rhs[i] - np.einsum("kn,krn->rn", low[i, :i], z[:i])) / low[i, i]
    x = np.empty_like(rhs)
    for i in range(p - 1, -1, -1):
        x[i] = (z[i] - np.einsum("kn,krn->rn", low[i + 1 :, i], x[i + 1 :])) / low[i, i]
    x = np.moveaxis(x, -1, 0)
    x[~ok] = 0.0
    return (x[..., 0] if vec else x), ok


# monomials i^p j^q (i: row offset, j: column offset from the window centre) with p + q <= 4;
# the first six, 1, i, j, i², ij, j², are the basis of the Jacobian polynomials
_MONO = [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
_MONO += [(p, d - p) for d in (3, 4) for p in range(d, -1, -1)]
_MONO_COL = {pq: i for i, pq in enumerate(_MONO)}
_KIDX = np.array(
    [[_MONO_COL[(p1 + p2, q1 + q2)] for (p2, q2) in _MONO[:6]] for (p1, q1) in _MONO[:6]]
)


@functools.lru_cache(maxsize=64)
def _geom(h: int) -> tuple[NDArray, NDArray]:
    """Monomials of a (2h+1)² window, flattened row-major: (6, M) for the model, (M, 15)."""
    offs = np.arange(-h, h + 1, dtype=np.float64)
    ii = np.repeat(offs, offs.size)
    jj = np.tile(offs, offs.size)
    mono = np.stack([ii**p * jj**q for p, q in _MONO], axis=1).astype(np.float32)
    return np.ascontiguousarray(mono[:, :6].T), mono


def _block(h: int, members: int = 1) -> int:
    """Windows per block for half-width ``h``."""
    return int(np.clip(_BLOCK_PIXELS // ((2 * h + 1) ** 2 * members), 16, _CHUNK))


def _gemm(a: NDArray, b: NDArray, out: NDArray | None = None) -> NDArray:
    """Multiply a tall ``a`` by ``b`` in row blocks small enough for single-threaded BLAS.

    OpenBLAS switches to all cores above ~2.6e5 multiply-adds; for these tall, thin products
    that made one call up to 40x slower on a shared 2-core machine than the same work split in
    blocks (and a thread pool must not be started for microseconds of work).
    """
    n = a.shape[0]
    if out is None:
        out = np.empty((n, b.shape[1]), dtype=np.result_type(a, b))
    rows = max(16, 200_000 // max(b.shape[0] * b.shape[1], 1))
    for s in range(0, n, rows):
        np.matmul(a[s : s + rows], b, out=out[s : s + rows])
    return out


# --------------------------------------------------------------------------------------------
# the model and its normal equations
# --------------------------------------------------------------------------------------------
def _gauss(pk: NDArray, h: int, cfg: _Cfg, out: NDArray | None = None) -> NDArray:
    """Unit-height Gaussians exp(-Q/2) of a batch on flattened windows, float32 (n, M).

    ``pk`` holds one Gaussian per row (A, y, x, shape), positions relative to the window
    centre.  ``-Q/2`` is a quadratic polynomial in the pixel offsets (i, j): its six
    coefficients per row times the window's monomials is one GEMM, then one exp.
    """
    y, x, a = pk[:, 1], pk[:, 2], pk[:, 3]
    if cfg.isotropic:
        b, c = np.zeros_like(a), a
    else:
        b, c = pk[:, 4], pk[:, 5]
    coef = np.empty((len(pk), 6), dtype=np.float32)
    coef[:, 0] = -0.5 * a * y * y - b * x * y - 0.5 * c * x * x
    coef[:, 1] = a * y + b * x
    coef[:, 2] = b * y + c * x
    coef[:, 3] = -0.5 * a
    coef[:, 4] = -b
    coef[:, 5] = -0.5 * c
    q = _gemm(coef, _geom(h)[0], out=out)
    return np.exp(q, out=q)


def _model(p: NDArray, gs: NDArray, cfg: _Cfg, out: NDArray) -> NDArray:
    """Sum of the members' ``A g`` plus the background, into ``out`` (n, M)."""
    m = np.multiply(gs[0], p[:, 0].astype(np.float32)[:, None], out=out)
    for k in range(1, cfg.members):
        m += gs[k] * cfg.peak(p, k)[:, 0].astype(np.float32)[:, None]
    if cfg.fit_background:
        m += p[:, cfg.i_bg].astype(np.float32)[:, None]
    return m


def _jac_coef(pk: NDArray, cfg: _Cfg) -> NDArray:
    """Jacobian of ``A g`` as ``g`` times polynomials: coefficients (n, n_peak, 6).

    Rows: d/dA, d/dy, d/dx, d/d(shape); columns: the monomials 1, i, j, i², ij, j² of the
    pixel offsets from the window centre.
    """
    amp, y, x, a = pk[:, 0], pk[:, 1], pk[:, 2], pk[:, 3]
    n = len(pk)
    coef = np.zeros((n, cfg.n_peak, 6))
    if cfg.isotropic:
        b, c = 0.0, a
    else:
        b, c = pk[:, 4], pk[:, 5]
    coef[:, 0, 0] = 1.0
    coef[:, 1, 0] = -amp * (a * y + b * x)  # dm/dy = A g (a dy + b dx)
    coef[:, 1, 1] = amp * a
    coef[:, 1, 2] = amp * b
    coef[:, 2, 0] = -amp * (b * y + c * x)  # dm/dx = A g (b dy + c dx)
    coef[:, 2, 1] = amp * b
    coef[:, 2, 2] = amp * c
    if cfg.isotropic:  # dm/da = -A g (dy² + dx²) / 2
        coef[:, 3, 0] = -0.5 * amp * (y * y + x * x)
        coef[:, 3, 1] = amp * y
        coef[:, 3, 2] = amp * x
        coef[:, 3, 3] = -0.5 * amp
        coef[:, 3, 5] = -0.5 * amp
    else:  # dm/da = -A g dy² / 2, dm/db = -A g dy dx, dm/dc = -A g dx² / 2
        coef[:, 3, 0] = -0.5 * amp * y * y
        coef[:, 3, 1] = amp * y
        coef[:, 3, 3] = -0.5 * amp
        coef[:, 4, 0] = -amp * x * y
        coef[:, 4, 1] = amp * x
        coef[:, 4, 2] = amp * y
        coef[:, 4, 4] = -amp
        coef[:, 5, 0] = -0.5 * amp * x * x
        coef[:, 5, 2] = amp * x
        coef[:, 5, 5] = -0.5 * amp
    return coef


class _Work:
    """Preallocated float32 (n, M) buffers of one block, reused by every iteration.

    Allocating fresh ~0.5 MB temporaries in every step costs page faults that took longer than
    the arithmetic itself on the test machine.
    """

    def __init__(self, n: int, size: int, members: int) -> None:
        shape = (n, size)
        self.g = np.empty((members, *shape), dtype=np.float32)
        self.m, self.r, self.t, self.wn, self.f = (
            np.empty(shape, dtype=np.float32) for _ in range(5)
        )
        # [w g_k for each member, then w r g_k for each member]
        self.f2 = np.empty((2 * members, *shape), dtype=np.float32)


def _normal_equations(
    p: NDArray, gs: NDArray, res: NDArray, w: NDArray, h: int, cfg: _Cfg, ws: _Work
) -> tuple[NDArray, NDArray]:
    """``J^T W J`` and ``J^T W r`` of a batch from weighted Gaussian moments.

    Every Jacobian column except the background's is a member's ``g`` times a polynomial of
    degree <= 2 in the pixel offsets (i, j) with per-peak coefficients ``C`` (n, n_peak, 6).  So
    the block of members k, l is ``C_k K_kl C_l^T`` with ``K_kl`` the moments of ``w g_k g_l``
    up to degree 4 (one GEMM with the window's monomials), the gradient is ``C_k`` times the
    moments of ``w r g_k``, and the background terms need the moments of ``w g_k`` and the sums
    of ``w`` and ``w r``.
    """
    n = len(p)
    mono = _geom(h)[1]
    mem, npk, npar = cfg.members, cfg.n_peak, cfg.n_params
    hess = np.empty((n, npar, npar))
    grad = np.empty((n, npar))
    coefs = [_jac_coef(cfg.peak(p, k), cfg) for k in range(mem)]
    wg = ws.f2[:mem, :n]
    for k in range(mem):
        np.multiply(w, gs[k], out=wg[k])
        np.multiply(wg[k], res, out=ws.f2[mem + k, :n])
    for k in range(mem):
        for m in range(k, mem):
            f = np.multiply(wg[k], gs[m], out=ws.f[:n])
            kmat = _gemm(f, mono).astype(np.float64)[:, _KIDX]  # (n, 6, 6)
            blk = coefs[k] @ kmat @ coefs[m].transpose(0, 2, 1)
            hess[:, k * npk : (k + 1) * npk, m * npk : (m + 1) * npk] = blk
            if m != k:
                hess[:, m * npk : (m + 1) * npk, k * npk : (k + 1) * npk] = blk.transpose(0, 2, 1)
    for k in range(mem):
        sl = slice(k * npk, (k + 1) * npk)
        mom_r = _gemm(ws.f2[mem + k, :n], mono[:, :6]).astype(np.float64)
        grad[:, sl] = (coefs[k] @ mom_r[:, :, None])[:, :, 0]
        if cfg.fit_background:
            mom_g = _gemm(wg[k], mono[:, :6]).astype(np.float64)
            hb = (coefs[k] @ mom_g[:, :, None])[:, :, 0]
            hess[:, sl, -1] = hb
            hess[:, -1, sl] = hb
    if cfg.fit_background:
        hess[:, -1, -1] = w.sum(axis=1)
        grad[:, -1] = np.multiply(w, res, out=ws.t[:n]).sum(axis=1)
    return hess, grad


def _wss(w: NDArray, r: NDArray, tmp: NDArray | None = None) -> NDArray:
    """Weighted sums of squares per row (float32 pairwise sums, returned as float64)."""
    t = np.multiply(w, r, out=tmp)
    t *= r
    return t.sum(axis=1).astype(np.float64)


def _small_step(step: NDArray, p: NDArray, cfg: _Cfg) -> NDArray:
    """Flag steps below ``tol``.

    Positions in px; A and the background relative to the amplitude; the shape relative to the
    mean precision (a + c) / 2 (b is ~0 for round peaks).
    """
    small = np.ones(len(p), dtype=bool)
    amps = np.abs(p[:, 0 : cfg.i_bg : cfg.n_peak])  # (n, members)
    top = amps.max(axis=1) + 1e-12
    for k in range(cfg.members):
        pk, sk = cfg.peak(p, k), cfg.peak(step, k)
        amp_scale = np.abs(pk[:, 0]) + 1e-12
        shp = pk[:, 3] if cfg.isotropic else 0.5 * (pk[:, 3] + pk[:, 5])
        shp_scale = np.abs(shp) + 1e-12
        small_k = (
            (np.abs(sk[:, 1]) <= cfg.tol)
            & (np.abs(sk[:, 2]) <= cfg.tol)
            & (np.abs(sk[:, 0]) <= cfg.tol * amp_scale)
            & (np.abs(sk[:, 3:]) <= cfg.tol * shp_scale[:, None]).all(axis=1)
        )
        if cfg.members > 1:
            # a member fading to nothing (a spurious start in a group) has a position and a
            # width the data no longer determine: its steps do not hold up the others
            small_k |= amp_scale < _FADED * top
        small &= small_k
    if cfg.fit_background:
        small &= np.abs(step[:, cfg.i_bg]) <= cfg.tol * top
    return small


def _valid_params(p: NDArray, h: float, cfg: _Cfg) -> NDArray:
    """Parameters a step may go to: finite, centres inside the window, 0.1 px < sigma < 10 h."""
    ok = np.isfinite(p).all(axis=1)
    lo, hi = 1.0 / (10.0 * h) ** 2, 1.0 / 0.1**2
    for k in range(cfg.members):
        pk = cfg.peak(p, k)
        ok &= (np.abs(pk[:, 1]) <= h + 0.5) & (np.abs(pk[:, 2]) <= h + 0.5)
        if cfg.isotropic:
            ok &= (pk[:, 3] > lo) & (pk[:, 3] < hi)
        else:
            a, b, c = pk[:, 3], pk[:, 4], pk[:, 5]
            half_tr = 0.5 * (a + c)
            disc = np.sqrt(np.maximum(0.25 * (a - c) ** 2 + b * b, 0.0))
            ok &= (half_tr - disc > lo) & (half_tr + disc < hi)
    return ok


# --------------------------------------------------------------------------------------------
# batched Levenberg–Marquardt on one block of equal-size windows
# --------------------------------------------------------------------------------------------
@dataclass
class _BlockResult:
    params: NDArray  # (n, P), positions relative to the window centre
    converged: NDArray  # bool
    n_iter: NDArray
    rss: NDArray  # unweighted sum of squared residuals over valid pixels
    chi2: NDArray  # weighted
    var_amp: NDArray  # (n, members): variance of each A from (J^T W J)^-1 * reduced chi2
    n_valid: NDArray
    var_pos: NDArray  # (n, members, 2): variance of each y and x, as var_amp


def _lm_block(data: NDArray, mask: NDArray, p0: NDArray, h: int, cfg: _Cfg) -> _BlockResult:
    """Fit one block of windows, all with the same half-width ``h`` and number of members.

    Per window: damped Gauss–Newton steps ``(H + lambda diag H) d = g``; a step is accepted if
    it lowers the weighted chi² (lambda / 10) and rejected otherwise (lambda * 10).  Windows
    whose lightly damped step is below ``tol`` (or whose lambda exceeds 1e7) are done and leave
    the working set, which is compacted in preallocated buffers.
    """
    n, size = data.shape
    npar, mem = cfg.n_params, cfg.members
    n_valid = mask.sum(axis=1).astype(np.int64)
    ws = _Work(n, size, mem)
    poisson = cfg.poisson

    def weights(m: NDArray, msk: NDArray, out: NDArray) -> NDArray:
        if not poisson:
            return msk
        np.maximum(m, np.float32(_POISSON_FLOOR), out=out)
        return np.divide(msk, out, out=out)

    def evaluate(pp: NDArray, na: int, d: NDArray) -> tuple[NDArray, NDArray, NDArray]:
        gs = ws.g[:, :na]
        for k in range(mem):
            _gauss(cfg.peak(pp, k), h, cfg, out=gs[k])
        mdl = _model(pp, gs, cfg, out=ws.m[:na])
        return gs, mdl, np.subtract(d, mdl, out=ws.r[:na])

    out_p = p0.astype(np.float64).copy()
    out_conv = np.zeros(n, dtype=bool)
    out_iter = np.zeros(n, dtype=np.int64)
    out_rss = np.full(n, np.nan)
    out_chi2 = np.full(n, np.nan)
    out_hess = np.zeros((n, npar, npar))

    # working set: double buffers for data, mask and weights (compaction writes the other one)
    dbuf = [np.array(data, dtype=np.float32), np.empty((n, size), dtype=np.float32)]
    kbuf = [np.array(mask, dtype=np.float32), np.empty((n, size), dtype=np.float32)]
    wbuf = [np.empty((n, size), dtype=np.float32) for _ in range(2)] if poisson else None
    cur = 0
    idx = np.arange(n)
    p = out_p.copy()
    d, msk = dbuf[0], kbuf[0]
    gs, mdl, res = evaluate(p, n, d)
    if poisson:
        w = weights(mdl, msk, wbuf[0])
        chi2 = _wss(w, res, ws.t)
        rss = _wss(msk, res, ws.t)
    else:
        w = msk
        chi2 = _wss(w, res, ws.t)
        rss = chi2.copy()
    hess, grad = _normal_equations(p, gs, res, w, h, cfg, ws)
    lam = np.full(n, _LAMBDA0)
    diag_idx = np.arange(npar)
    for it in range(1, cfg.max_iter + 1):
        out_iter[idx] = it
        diag = hess[:, diag_idx, diag_idx]
        floor = 1e-12 * diag.max(axis=1, keepdims=True) + 1e-30
        a_mat = hess.copy()
        a_mat[:, diag_idx, diag_idx] += lam[:, None] * np.maximum(diag, floor)
        rhs = grad
        if mem > 1:  # freeze the position and shape of faded members (see _small_step)
            rhs = grad.copy()
            amps = np.abs(p[:, 0 : cfg.i_bg : cfg.n_peak])
            faded = amps < _FADED * amps.max(axis=1, keepdims=True)
            for k in range(mem):
                rows = np.nonzero(faded[:, k])[0]
                if rows.size:
                    sl = slice(k * cfg.n_peak + 1, (k + 1) * cfg.n_peak)
                    a_mat[rows, sl, :] = 0.0
                    a_mat[rows, :, sl] = 0.0
                    for i in range(sl.start, sl.stop):
                        a_mat[rows, i, i] = 1.0
                    rhs[rows, sl] = 0.0
        step, ok = _chol_solve(a_mat, rhs)
        ok &= _valid_params(p + step, h, cfg)
        # Converged: a lightly damped step below tol, taken without another evaluation.
        # Strongly damped steps are small for another reason; a window whose damping ran away
        # cannot lower chi² any more and stops too.
        conv = ok & (lam <= 1e-2) & _small_step(step, p, cfg)
        done = conv | (lam >= _LAMBDA_MAX)
        if done.any():
            p[conv] += step[conv]
            di = idx[done]
            out_p[di] = p[done]
            out_conv[di] = True
            out_rss[di] = rss[done]
            out_chi2[di] = chi2[done]
            out_hess[di] = hess[done]
            keep = ~done
            idx = idx[keep]
            if idx.size == 0:
                break
            nk = idx.size
            p, hess, grad, lam = p[keep], hess[keep], grad[keep], lam[keep]
            chi2, rss, step, ok = chi2[keep], rss[keep], step[keep], ok[keep]
            nxt = 1 - cur
            d = np.compress(keep, d, axis=0, out=dbuf[nxt][:nk])
            msk = np.compress(keep, msk, axis=0, out=kbuf[nxt][:nk])
            w = np.compress(keep, w, axis=0, out=wbuf[nxt][:nk]) if poisson else msk
            cur = nxt
        na = idx.size
        pt = p + step
        gt, mt, rt = evaluate(pt, na, d)
        chi2_t = _wss(w, rt, ws.t[:na])
        # (a relative slack of 1e-6 absorbs the float32 rounding of the sums near the minimum)
        acc = ok & np.isfinite(chi2_t) & (chi2_t <= chi2 * (1.0 + 1e-6) + 1e-30)
        if acc.any():
            wt = weights(mt, msk, ws.wn[:na])
            h_t, g_t = _normal_equations(pt, gt, rt, wt, h, cfg, ws)
            p[acc] = pt[acc]
            hess[acc] = h_t[acc]
            grad[acc] = g_t[acc]
            if poisson:
                chi2[acc] = _wss(wt, rt, ws.t[:na])[acc]
                rss[acc] = _wss(msk, rt, ws.t[:na])[acc]
                np.copyto(w, wt, where=acc[:, None])
            else:
                chi2[acc] = chi2_t[acc]
                rss[acc] = chi2_t[acc]
        lam = np.where(acc, np.maximum(lam * 0.1, 1e-9), lam * 10.0)
    if idx.size:  # not converged within max_iter
        out_p[idx] = p
        out_rss[idx] = rss
        out_chi2[idx] = chi2
        out_hess[idx] = hess
    # variances of each amplitude (the significance test) and position (standard errors):
    # the diagonal of (J^T W J)^-1, scaled by how far chi2 is from what the noise model expects
    rows = (np.arange(mem)[:, None] * cfg.n_peak + np.arange(3)[None, :]).ravel()  # A, y, x
    e = np.zeros((n, npar, rows.size))
    e[:, rows, np.arange(rows.size)] = 1.0
    inv, okh = _chol_solve(out_hess, e)
    diag = inv[:, rows, np.arange(rows.size)].reshape(n, mem, 3)
    amp_scale = out_chi2 / np.maximum(n_valid - npar, 1)  # the reduced chi2
    pos_scale = amp_scale
    if poisson:
        # Positions: chi2 over its Poisson expectation, not over dof.  The weights' floor makes
        # each faint pixel add m / floor < 1 to chi2 (a window on a dark background: chi2 / dof
        # far below 1, errors too small), while the ratio still absorbs a detector gain.
        _, mdl, _ = evaluate(out_p, n, np.asarray(data, dtype=np.float32))
        expect = (mask * mdl / np.maximum(mdl, np.float32(_POISSON_FLOOR))).sum(axis=1)
        expect = np.maximum(expect * (1.0 - npar / np.maximum(n_valid, npar + 1)), 1e-12)
        pos_scale = out_chi2 / expect
    scale = np.stack([amp_scale, pos_scale, pos_scale], axis=-1)[:, None, :]  # (n, 1, 3)
    var = np.where((okh & (n_valid > npar))[:, None, None], diag * scale, np.inf)
    return _BlockResult(
        out_p, out_conv, out_iter, out_rss, out_chi2, var[:, :, 0], n_valid, var[:, :, 1:]
    )


# --------------------------------------------------------------------------------------------
# windows, starting values, neighbour models
# --------------------------------------------------------------------------------------------
class _Windows:
    """Square windows of one image, gathered from a NaN-padded copy made once per image.

    Pixels outside the image (and NaN pixels) come out as 0 with mask 0, so border peaks fit on
    the pixels they have.
    """

    def __init__(self, img: NDArray) -> None:
        self.img = img
        self._pad = -1
        self._padded = img
        self._nan = bool(np.isnan(img).any())

    def gather(self, cy: NDArray, cx: NDArray, h: int) -> tuple[NDArray, NDArray]:
        """Flattened (n, k²) windows around integer centres and their masks (float32 0/1)."""
        hh, ww = self.img.shape
        k = 2 * h + 1
        if self._pad < k:  # room for any window that touches the image
            self._pad = k
            self._padded = np.pad(self.img, k, constant_values=np.nan)
        # a centre farther out than h + 1 has a window wholly outside, as at h + 1
        rows = np.clip(cy, -h - 1, hh + h) + (self._pad - h)
        cols = np.clip(cx, -h - 1, ww + h) + (self._pad - h)
        win = sliding_window_view(self._padded, (k, k))[rows, cols].reshape(len(cy), -1)
        mask = np.ones(win.shape, dtype=np.float32)
        # only windows that reach beyond the image (or any, if it has NaNs) have pixels to mask
        part = self._nan | (cy < h) | (cy >= hh - h) | (cx < h) | (cx >= ww - h)
        if part.any():
            sub = win[part]
            ok = np.isfinite(sub)
            win[part] = np.where(ok, sub, np.float32(0.0))
            mask[part] = ok
        return win, mask


def _moment_start(
    data: NDArray, mask: NDArray, y0: NDArray, x0: NDArray, h: int, cfg: _Cfg
) -> NDArray:
    """Start values: low percentile as background, local peak height, half-maximum area."""
    n = data.shape[0]
    flat = data.reshape(n, -1)
    valid = mask.reshape(n, -1) > 0
    bg = _low_percentile(flat, mask.reshape(n, -1)) if cfg.fit_background else np.zeros(n)
    k = 2 * h + 1
    sq = np.s_[:, h - 1 : h + 2, h - 1 : h + 2]  # the 3 x 3 pixels around the window centre
    core = np.where(mask.reshape(n, k, k)[sq] > 0, data.reshape(n, k, k)[sq], -np.inf)
    top = core.reshape(n, -1).max(axis=1).astype(np.float64)
    amp = top - bg
    wmax = np.where(valid, flat, -np.inf).max(axis=1).astype(np.float64)
    amp = np.where(np.isfinite(amp) & (amp > 0), amp, wmax - bg)
    tiny = 1e-6 * (np.abs(bg) + 1.0)
    amp = np.where(np.isfinite(amp) & (amp > tiny), amp, tiny)
    above = (valid & (flat - bg[:, None].astype(np.float32) > 0.5 * amp[:, None])).sum(axis=1)
    sigma = np.sqrt(above / (2.0 * np.pi * np.log(2.0)))
    sigma = np.clip(sigma, 0.6, max(0.6, 0.5 * h))
    p = np.zeros((n, cfg.n_params))
    p[:, 0] = amp
    p[:, 1] = y0
    p[:, 2] = x0
    p[:, 3] = 1.0 / sigma**2
    if not cfg.isotropic:
        p[:, 4] = 0.0
        p[:, 5] = 1.0 / sigma**2
    if cfg.fit_background:
        p[:, cfg.i_bg] = bg
    return p


def _max_sigma2(p: NDArray, cfg: _Cfg) -> NDArray:
    """Largest variance (sigma²) of each Gaussian."""
    if cfg.isotropic:
        return 1.0 / p[:, 3]
    a, b, c = p[:, 3], p[:, 4], p[:, 5]
    lo = 0.5 * (a + c) - np.sqrt(0.25 * (a - c) ** 2 + b * b)
    return 1.0 / np.maximum(lo, 1e-12)


def _render_sum(
    shape: tuple[int, int], centres: NDArray, prel: NDArray, radius: NDArray, cfg: _Cfg
) -> NDArray:
    """Sum of the fitted Gaussians (without background) into an image, float32.

    Peak ``i`` is drawn on the square of half-width ``radius[i]`` around ``centres[i]`` with
    exactly the arithmetic of :func:`_gauss`, so that its own part can be added back exactly.
    """
    hh, ww = shape
    # the accumulator has a frame of twice the largest radius: every square that touches the
    # image lies inside it, so the flat indices are one fixed offset pattern plus each peak's
    # base index, with no clipping
    big = 2 * int(radius.max()) if radius.size else 0
    w2 = ww + 2 * big
    acc = np.zeros((hh + 2 * big) * w2)
    # squares that miss the image altogether are left out (they would leave the frame)
    touches = (
        (centres[:, 0] >= -radius)
        & (centres[:, 0] < hh + radius)
        & (centres[:, 1] >= -radius)
        & (centres[:, 1] < ww + radius)
    )
    for r in np.unique(radius):
        sel_all = np.nonzero((radius == r) & touches)[0]
        if sel_all.size == 0:
            continue
        # row-sorted blocks touch a narrow band of the image: bincount only that band
        sel_all = sel_all[np.argsort(centres[sel_all, 0], kind="stable")]
        offs = np.arange(-r, r + 1)
        pattern = (offs[:, None] * w2 + offs[None, :]).ravel()
        step = _block(int(r))
        for s in range(0, sel_all.size, step):
            sel = sel_all[s : s + step]
            vals = _gauss(prel[sel], int(r), cfg)
            vals *= prel[sel, 0].astype(np.float32)[:, None]
            base = (centres[sel, 0] + big) * w2 + centres[sel, 1] + big
            lo, hi = int(base.min() + pattern[0]), int(base.max() + pattern[-1]) + 1
            idx = (base - lo)[:, None] + pattern[None, :]
            acc[lo:hi] += np.bincount(idx.ravel(), weights=vals.ravel(), minlength=hi - lo)
    return acc.reshape(hh + 2 * big, w2)[big : big + hh, big : big + ww].astype(np.float32)


def _shape_params(p: NDArray, cfg: _Cfg) -> tuple[NDArray, NDArray, NDArray]:
    """(sigma_y, sigma_x, theta) from the precision parameters; theta in [-pi/4, pi/4)."""
    if cfg.isotropic:
        s = 1.0 / np.sqrt(np.where(p[:, 3] > 0, p[:, 3], np.nan))
        return s, s.copy(), np.zeros(len(p))
    a, b, c = p[:, 3], p[:, 4], p[:, 5]
    mean = 0.5 * (a + c)
    rad = np.sqrt(0.25 * (a - c) ** 2 + b * b)
    l_big, l_small = mean + rad, mean - rad
    with np.errstate(invalid="ignore", divide="ignore"):
        s_small = 1.0 / np.sqrt(np.where(l_big > 0, l_big, np.nan))
        s_big = 1.0 / np.sqrt(np.where(l_small > 0, l_small, np.nan))
    # theta of the axis with the larger precision (the narrower one) as sigma_y
    theta = 0.5 * np.arctan2(2.0 * b, a - c)  # in (-pi/2, pi/2]
    sy, sx = s_small.copy(), s_big.copy()
    hi = theta >= np.pi / 4
    lo = theta < -np.pi / 4
    theta = np.where(hi, theta - np.pi / 2, np.where(lo, theta + np.pi / 2, theta))
    swap = hi | lo
    sy, sx = np.where(swap, s_big, sy), np.where(swap, s_small, sx)
    return sy, sx, theta


def _as_coords(coords: ArrayLike | pd.DataFrame) -> tuple[NDArray, pd.Index]:
    if isinstance(coords, pd.DataFrame):
        arr = coords[["y", "x"]].to_numpy(dtype=np.float64)
        index = coords.index
    else:
        arr = np.asarray(coords, dtype=np.float64)
        if arr.size == 0:
            arr = arr.reshape(0, 2)
        index = pd.RangeIndex(len(arr))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"coords must have shape (N, 2) of (y, x); got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("coords contain NaN or inf")
    return arr, index


def _nn_distance(coords: NDArray) -> NDArray:
    """Distance to the nearest other peak, ignoring near-duplicates (closer than 1.5 px)."""
    n = len(coords)
    if n < 2:
        return np.full(n, np.inf)
    tree = cKDTree(coords)
    nn = tree.query(coords, k=2)[0][:, 1]
    dup = np.nonzero(nn <= 1.5)[0]  # rare: look past the near-duplicates of these
    if dup.size:
        dist = tree.query(coords[dup], k=min(n, 6))[0][:, 1:]
        nn[dup] = np.where(dist > 1.5, dist, np.inf).min(axis=1)
    return nn


def _half_widths(
    coords: NDArray, window: ArrayLike | None, boxes: ArrayLike | None, nn: NDArray
) -> NDArray:
    n = len(coords)
    if window is not None:
        h = np.broadcast_to(np.ceil(np.asarray(window, dtype=np.float64)), (n,))
        return np.clip(h, 2, None).astype(np.int64)
    if boxes is not None:
        bx = np.asarray(boxes, dtype=np.float64)
        if bx.shape != (n, 4):
            raise ValueError(f"boxes must have shape (N, 4) (y0, x0, y1, x1); got {bx.shape}")
        size = np.maximum(bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1])
        return np.clip(np.ceil(0.5 * size), 3, 20).astype(np.int64)
    h = np.where(np.isfinite(nn), np.round(0.5 * nn), 12)
    return np.clip(h, 3, 12).astype(np.int64)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def fit_gaussians(
    image: ArrayLike,
    coords: ArrayLike | pd.DataFrame,
    *,
    window: ArrayLike | None = None,
    boxes: ArrayLike | None = None,
    isotropic: bool = False,
    fit_background: bool = True,
    neighbours: str = "subtract",
    n_passes: int = 2,
    max_iter: int = 30,
    merge_distance: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    weights: str = "auto",
    max_shift: ArrayLike | None = None,
    min_sigma: float = 0.3,
    max_sigma: float | None = None,
    min_snr: float = 3.0,
    drop_merged: bool = True,
    tol: float = 1e-3,
) -> pd.DataFrame:
    """Refine many peak positions at once by 2D Gaussian fits.

    Each peak gets a 2D Gaussian plus a constant background, fitted in a square window around it;
    all peaks are fitted together by one batched Levenberg–Marquardt (see the module docstring).

    Parameters
    ----------
    image : array_like, shape (H, W)
        The image, bright peaks on a darker background (invert dark-contrast images first).
        NaN pixels are ignored; pixels outside the image are masked, so border peaks fit.
    coords : array_like, shape (N, 2), or DataFrame with columns ``y``, ``x``
        Starting positions (row, col) in pixels.  A DataFrame's index is kept in the result.
    window : int, float or array_like of shape (N,), optional
        Half-width of the fit window in pixels (the window is ``2 h + 1`` square).
    boxes : array_like, shape (N, 4), optional
        Detector boxes (y0, x0, y1, x1); the half-width is half the larger box side (3 to 20 px).
        Without ``window`` and ``boxes`` the half-width is half the distance to the nearest
        neighbour (near-duplicates closer than 1.5 px ignored), rounded and clipped to 3–12 px.
    isotropic : bool
        Fit round Gaussians (A, y, x, sigma, background) instead of elliptical ones
        (A, y, x, sigma_y, sigma_x, theta, background).
    fit_background : bool
        Fit a constant background per window; if False the background is fixed at 0 (for
        background-subtracted images).
    neighbours : {"subtract", "none"}
        ``"subtract"`` (default): after each pass the fitted Gaussians of all other peaks
        (without their backgrounds) are subtracted from every window and the windows are
        refitted.  The overlapping tails of neighbouring columns otherwise pull each fit towards
        its neighbours, the more so the closer the columns and the more unequal their
        amplitudes.  Subtracting the neighbours' current models and refitting is a block-Jacobi
        iteration towards the joint fit of all peaks that keeps every problem small and
        independent.  It converges fast for columns more than ~3.5 sigma apart; closer groups
        (up to 4 peaks; e.g. dumbbells) are fitted jointly instead, as a sum of Gaussians on one
        background in one window.  ``"none"``: later passes only re-centre the windows on the
        fitted positions.
    n_passes : int
        Number of fit passes (1 = a single fit, no neighbour subtraction).
    max_iter : int
        Levenberg–Marquardt iterations per pass (twice that for the joint fits of close groups).
    merge_distance : float, optional
        Fitted peaks closer than this are duplicates of one peak.  Default: a quarter of the
        median nearest-neighbour distance of ``coords`` (at least 1 px), or 1.5 px for fewer
        than two peaks.
    progress : callable(done, total), optional
        Called after each block of peaks in each pass; ``total`` is ``n_passes * N``.
    weights : {"auto", "poisson", "uniform"}
        ``"poisson"``: iteratively re-weighted least squares with weights ``1 / max(model, 1)``,
        the Poisson maximum-likelihood fit for images in counts (it reaches the Cramér–Rao
        bound at low dose, where least squares is 5–35 % worse); on images whose values are
        below 1 it is the same as ``"uniform"``.  ``"uniform"``: ordinary least squares.
        ``"auto"`` (default): ``"poisson"`` unless the image has negative values (a normalised
        or background-subtracted image, whose noise is not Poisson), then ``"uniform"``.
    max_shift : float or array_like, optional
        A fit that ends farther than this from its start fails with ``"moved_too_far"``.
        Default: 0.75 times the window half-width (at least 1.5 px).
    min_sigma, max_sigma : float
        Fits with a width outside ``[min_sigma, max_sigma]`` fail with ``"bad_width"``;
        ``max_sigma`` defaults to the window half-width.
    min_snr : float
        Fits whose amplitude is not ``min_snr`` standard errors above 0 fail with
        ``"low_amplitude"``.
    drop_merged : bool
        Duplicates: when fitted peaks are closer than ``merge_distance`` the one whose start
        was closest to the fitted peak is kept (ties: the earlier row).  With True (default) the
        others are dropped from the result; with False they are kept with ``fit_ok`` False,
        ``fit_status`` "merged" and ``merged_into`` the index label of the kept row.
    tol : float
        Convergence: every parameter step below ``tol`` (px for positions, relative otherwise).

    Returns
    -------
    pandas.DataFrame
        One row per kept input row, indexed like ``coords``, with columns ``y``, ``x``,
        ``amplitude``, ``amplitude_snr`` (amplitude over its standard error: how clearly the
        column stands above the noise), ``y_err``, ``x_err`` (standard errors of the position,
        px, from the fit's curvature and residuals: with Poisson weights the Cramér–Rao bound
        at the fit; NaN for failed fits), ``sigma_y``, ``sigma_x``, ``theta`` (radians, in
        [-pi/4, pi/4), rotation of the Gaussian's y axis towards +x), ``background``,
        ``fit_ok`` (bool), ``fit_status`` ("ok", "diverged", "moved_too_far", "bad_width",
        "low_amplitude", "max_iter", "merged"),
        ``y_init``, ``x_init``, ``n_iter`` (iterations over all passes), ``residual_rms`` (of
        the last pass's window, image units) and ``merged_into`` (-1, or the kept row's label).
        Failed fits report ``y, x = y_init, x_init``; their other fitted values are kept for
        diagnosis.

    Examples
    --------
    >>> from napari_atomnet.synth import render_gaussians
    >>> img = render_gaussians((40, 40), [12.3, 25.0], [14.6, 27.2], [100.0, 80.0], [1.5, 2.0])
    >>> df = fit_gaussians(img, [[12.0, 15.0], [26.0, 27.0]])
    >>> df[["y", "x"]].round(3).values.tolist()
    [[12.3, 14.6], [25.0, 27.2]]
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2D (H, W); got shape {img.shape}")
    if img.size == 0:
        raise ValueError("image is empty")
    if np.iscomplexobj(img) or not (np.issubdtype(img.dtype, np.number) or img.dtype == bool):
        raise ValueError(f"image must be real-valued; got dtype {img.dtype}")
    img = np.ascontiguousarray(img, dtype=np.float32)
    if neighbours not in ("subtract", "none", None):
        raise ValueError(f"neighbours must be 'subtract' or 'none'; got {neighbours!r}")
    if weights not in ("auto", "poisson", "uniform"):
        raise ValueError(f"weights must be 'auto', 'poisson' or 'uniform'; got {weights!r}")
    if weights == "auto":
        with np.errstate(invalid="ignore"):
            weights = "uniform" if np.nanmin(img, initial=0.0) < 0 else "poisson"
    n_passes = max(int(n_passes), 1)
    cfg = _Cfg(
        isotropic=bool(isotropic),
        fit_background=bool(fit_background),
        poisson=weights == "poisson",
        max_iter=max(int(max_iter), 1),
        tol=float(tol),
    )
    init, index = _as_coords(coords)
    n = len(init)
    if n == 0:
        return _empty_frame(index)

    nn = _nn_distance(init)
    half = _half_widths(init, window, boxes, nn)
    if merge_distance is None:
        finite = nn[np.isfinite(nn)]
        merge_distance = max(0.25 * float(np.median(finite)), 1.0) if finite.size else 1.5
    lim = _Limits(
        shift=(
            np.maximum(0.75 * half, 1.5)
            if max_shift is None
            else np.broadcast_to(np.asarray(max_shift, dtype=np.float64), (n,))
        ),
        min_sigma=float(min_sigma),
        max_sigma=half.astype(np.float64) if max_sigma is None else np.full(n, float(max_sigma)),
        min_snr=float(min_snr),
    )
    st = _State(
        init=init,
        params=np.full((n, cfg.n_params), np.nan),  # absolute positions
        status=np.full(n, _DIVERGED, dtype=np.int64),
        n_iter=np.zeros(n, dtype=np.int64),
        rms=np.full(n, np.nan),
        snr=np.zeros(n),
        err=np.full((n, 2), np.nan),
    )
    merged_into = np.full(n, -1, dtype=np.int64)
    centres = np.round(init).astype(np.int64)
    subtract = neighbours == "subtract"
    total = n_passes * n

    base_cfg = cfg
    for pss in range(n_passes):
        cfg = _pass_cfg(base_cfg, pss, n_passes)
        ok_prev = st.status == _OK
        st.start = st.params.copy()
        new_centres = centres.copy()
        clusters: list[NDArray] = []
        if pss == 0:
            todo = np.arange(n)
        else:
            new_centres[ok_prev] = np.round(st.params[ok_prev, 1:3]).astype(np.int64)
            active = st.status != _MERGED
            if subtract:
                todo = np.nonzero(active)[0]
                clusters = _find_clusters(st, active, cfg)
            else:  # without subtraction only the windows that move change
                moved = (new_centres != centres).any(axis=1)
                todo = np.nonzero(active & ok_prev & moved)[0]
        model_img, radius = None, np.zeros(n, dtype=np.int64)
        if pss > 0 and subtract and ok_prev.any():
            okp = np.nonzero(ok_prev)[0]
            prel = st.params[okp].copy()
            prel[:, 1:3] -= new_centres[okp]
            rad = np.maximum(half[okp], np.ceil(5.0 * np.sqrt(_max_sigma2(prel, cfg))))
            radius[okp] = np.minimum(rad, 3 * half[okp]).astype(np.int64)
            model_img = _render_sum(img.shape, new_centres[okp], prel, radius[okp], cfg)
        work = _Windows(img if model_img is None else img - model_img)
        in_cluster = np.zeros(n, dtype=bool)
        for c in clusters:
            in_cluster[c] = True
        singles = todo[~in_cluster[todo]]
        n_todo = max(todo.size, 1)
        done_in_pass = 0
        narrow = pss == 0 and n_passes > 1 and subtract
        for hval in np.unique(half[singles]):
            grp = singles[half[singles] == hval]
            # blocks sized for the narrower windows a first pass mostly fits on
            step = _block(_first_pass_half(int(hval)) if narrow else int(hval))
            for s in range(0, grp.size, step):
                sel = grp[s : s + step]
                _fit_singles(
                    work,
                    sel,
                    int(hval),
                    new_centres,
                    st,
                    ok_prev,
                    model_img is not None,
                    cfg,
                    lim,
                    narrow=narrow,
                )
                done_in_pass += sel.size
                if progress is not None:
                    progress(pss * n + done_in_pass * n // n_todo, total)
        pending = clusters
        for _ in range(_MAX_CLUSTER):  # joint fits; groups that fail lose a member and retry
            if not pending:
                break
            for members, cen, hc in _cluster_windows(pending, st, ok_prev, half, cfg):
                step = _block(hc, members.shape[1])
                for s in range(0, len(members), step):
                    sel = members[s : s + step]
                    _fit_clusters(
                        work,
                        sel,
                        cen[s : s + step],
                        hc,
                        st,
                        ok_prev,
                        new_centres,
                        radius,
                        cfg,
                        lim,
                    )
                    if progress is not None:
                        done_in_pass += sel.size
                        progress(pss * n + min(done_in_pass, n_todo) * n // n_todo, total)
            pending, alone, dropped = _prune_clusters(
                pending, st, ok_prev, merged_into, merge_distance
            )
            back = dropped[ok_prev[dropped]]
            if model_img is not None and back.size:
                # peaks judged spurious were subtracted from the windows: put them back
                prel = st.start[back].copy()
                prel[:, 1:3] -= new_centres[back]
                work = _Windows(
                    work.img + _render_sum(img.shape, new_centres[back], prel, radius[back], cfg)
                )
            for hval in np.unique(half[alone]):
                sel = alone[half[alone] == hval]
                _fit_singles(
                    work, sel, int(hval), new_centres, st, ok_prev, model_img is not None, cfg, lim
                )
        centres = new_centres
        if progress is not None:
            progress((pss + 1) * n, total)
        _merge(st, merged_into, merge_distance)

    return _frame(st, merged_into, index, base_cfg, drop_merged)


def _first_pass_half(h: int, p0: NDArray | None = None) -> int:
    """Window half-width for a first pass that only places the neighbour models.

    ``_FIRST_PASS_WINDOW`` of the full half-width ``h``, but never less than twice the block's
    median start width (with ``p0``, the start parameters: a narrower window cannot tell the
    peaks' amplitude, width and background apart) nor 3 px.  One width per block keeps the
    block one batch.
    """
    narrow = max(round(_FIRST_PASS_WINDOW * h), 3)
    if p0 is not None:
        sigma = float(np.median(1.0 / np.sqrt(np.maximum(p0[:, 3], 1e-12))))
        narrow = max(narrow, int(np.ceil(2.0 * sigma)))
    return int(min(narrow, h))


def _pass_cfg(cfg: _Cfg, pss: int, n_passes: int) -> _Cfg:
    """Return the settings of one pass: passes before the last stop at a looser tolerance.

    An early pass only has to bring the peaks close enough for the neighbour models that the
    next pass subtracts; the next pass starts from its result and converges to ``tol``.
    """
    if pss == n_passes - 1:
        return cfg
    return replace(cfg, tol=max(cfg.tol, _EARLY_PASS_TOL))


@dataclass
class _State:
    """Per-peak results, updated in place by every pass."""

    init: NDArray  # (N, 2)
    params: NDArray  # (N, n_peak + background), absolute positions
    status: NDArray
    n_iter: NDArray
    rms: NDArray
    snr: NDArray  # amplitude / its standard error, from the last fit
    err: NDArray  # (N, 2): standard errors of y and x, from the last fit
    # the parameters at the start of the pass: what the neighbour image was rendered from
    start: NDArray | None = None


@dataclass
class _Limits:
    shift: NDArray
    min_sigma: float
    max_sigma: NDArray
    min_snr: float


def _fit_singles(
    work: _Windows,
    sel: NDArray,
    h: int,
    centres: NDArray,
    st: _State,
    ok_prev: NDArray,
    add_own: bool,
    cfg: _Cfg,
    lim: _Limits,
    narrow: bool = False,
) -> None:
    """Gather, start, fit and classify one block of single peaks (results into ``st``).

    With ``narrow`` (the first of several passes, which only places the neighbour models for the
    next one to 0.05 px) the block is fitted on narrower windows when its peaks' start widths
    allow it (see :func:`_first_pass_half`): fewer pixels, and less of the neighbours that
    cannot be subtracted yet.
    """
    cy, cx = centres[sel, 0], centres[sel, 1]
    data, mask = work.gather(cy, cx, h)
    okp = ok_prev[sel]
    p0 = np.empty((sel.size, cfg.n_params))
    if okp.any():
        prev = st.start[sel[okp]].copy()
        prev[:, 1] -= cy[okp]
        prev[:, 2] -= cx[okp]
        p0[okp] = prev
        if add_own:  # the window had every fitted peak subtracted: add this peak's own back
            own = _gauss(prev, h, cfg) * prev[:, 0].astype(np.float32)[:, None]
            data[okp] += own * mask[okp]
    bad = ~okp
    if bad.any():
        y0 = st.init[sel[bad], 0] - cy[bad]
        x0 = st.init[sel[bad], 1] - cx[bad]
        p0[bad] = _moment_start(data[bad], mask[bad], y0, x0, h, cfg)
    hv = _first_pass_half(h, p0) if narrow else h
    if hv < h:  # the centred (2 hv + 1)² part of each window
        k, c = 2 * h + 1, slice(h - hv, h + hv + 1)
        data = np.ascontiguousarray(data.reshape(-1, k, k)[:, c, c].reshape(sel.size, -1))
        mask = np.ascontiguousarray(mask.reshape(-1, k, k)[:, c, c].reshape(sel.size, -1))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        res = _lm_block(data, mask, p0, hv, cfg)
    p_abs = res.params.copy()
    p_abs[:, 1] += cy
    p_abs[:, 2] += cx
    st.params[sel] = p_abs
    st.n_iter[sel] += res.n_iter
    st.rms[sel] = np.sqrt(res.rss / np.maximum(res.n_valid, 1))
    st.status[sel] = _classify(
        res.params, p_abs, res, res.var_amp[:, 0], sel, cfg, cfg.n_params, st, lim
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        st.snr[sel] = np.nan_to_num(res.params[:, 0] / np.sqrt(res.var_amp[:, 0]))
    st.err[sel] = np.sqrt(res.var_pos[:, 0])


def _find_clusters(st: _State, active: NDArray, cfg: _Cfg, kappa: float = 3.5) -> list[NDArray]:
    """Find groups of 2–4 active peaks closer than ``kappa`` sigma (connected components)."""
    ok = active & (st.status == _OK)
    ids = np.nonzero(active)[0]
    if ids.size < 2 or not ok.any():
        return []
    sig_ok = np.sqrt(_max_sigma2(st.params[ok], cfg))
    sig = np.full(len(st.init), float(np.median(sig_ok)))
    sig[ok] = sig_ok
    pos = np.where(ok[:, None], st.params[:, 1:3], st.init)[ids]
    sig = sig[ids]
    pairs = cKDTree(pos).query_pairs(kappa * float(sig.max()), output_type="ndarray")
    if pairs.size == 0:
        return []
    dist = np.hypot(*(pos[pairs[:, 0]] - pos[pairs[:, 1]]).T)
    pairs = pairs[dist < kappa * np.maximum(sig[pairs[:, 0]], sig[pairs[:, 1]])]
    if pairs.size == 0:
        return []
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(ids.size,) * 2)
    n_comp, lab = connected_components(graph, directed=False)
    size = np.bincount(lab, minlength=n_comp)
    order = np.argsort(lab, kind="stable")
    groups = np.split(ids[order], np.cumsum(size)[:-1])
    return [g for g in groups if 2 <= g.size <= _MAX_CLUSTER]


def _cluster_windows(
    clusters: list[NDArray], st: _State, ok_prev: NDArray, half: NDArray, cfg: _Cfg
) -> list[tuple[NDArray, NDArray, int]]:
    """Clusters grouped by (size, window half-width): (members (c, m), centres (c, 2), h)."""
    if not clusters:
        return []
    ok = ok_prev
    sig_all = np.sqrt(_max_sigma2(st.start[ok], cfg)) if ok.any() else np.array([1.0])
    sig_med = float(np.median(sig_all))
    out: dict[tuple[int, int], list[tuple[NDArray, NDArray]]] = {}
    for mem in clusters:
        okm = ok[mem]
        pos = np.where(okm[:, None], st.start[mem, 1:3], st.init[mem])
        sig = np.full(mem.size, sig_med)
        if okm.any():
            sig[okm] = np.sqrt(_max_sigma2(st.start[mem[okm]], cfg))
        cen = np.round(pos.mean(axis=0)).astype(np.int64)
        ext = int(np.ceil(np.abs(pos - cen).max()))
        core = int(np.max(np.maximum(half[mem], np.ceil(2.5 * sig))))
        hc = min(core + ext, _MAX_CLUSTER_HALF)
        out.setdefault((mem.size, hc), []).append((mem, cen))
    return [
        (np.stack([m for m, _ in v]), np.stack([c for _, c in v]), hc)
        for (_, hc), v in sorted(out.items())
    ]


def _fit_clusters(
    work: _Windows,
    members: NDArray,
    cen: NDArray,
    h: int,
    st: _State,
    ok_prev: NDArray,
    centres: NDArray,
    radius: NDArray,
    cfg: _Cfg,
    lim: _Limits,
) -> None:
    """Fit a block of clusters (c, m) jointly: m Gaussians and one background per window."""
    nc, mem = members.shape
    ccfg = replace(cfg, members=mem, max_iter=_CLUSTER_ITER_FACTOR * cfg.max_iter)
    npk = cfg.n_peak
    data, mask = work.gather(cen[:, 0], cen[:, 1], h)
    k = 2 * h + 1
    offs = np.arange(-h, h + 1)
    okm = ok_prev[members]  # (c, m)
    p0 = np.zeros((nc, ccfg.n_params))
    # add back the members' own models where they were subtracted (their render squares)
    for j in range(mem):
        sel = okm[:, j]
        if not sel.any():
            continue
        ids = members[sel, j]
        prev = st.start[ids, :npk].copy()
        prev[:, 1:3] -= cen[sel]
        own = _gauss(prev, h, cfg) * prev[:, 0].astype(np.float32)[:, None]
        dr = centres[ids] - cen[sel]  # render centre relative to the window centre
        r = radius[ids]
        rin = np.abs(offs[None, :] - dr[:, :1]) <= r[:, None]
        cin = np.abs(offs[None, :] - dr[:, 1:]) <= r[:, None]
        patch = (rin[:, :, None] & cin[:, None, :]).reshape(len(ids), -1)
        data[sel] += own * (mask[sel] * patch)
    # start values: previous fits where ok; otherwise the start position, the cluster's (or
    # all fits') median shape and the height above the background left by the other members
    ok_all = ok_prev
    shape_med = np.median(st.start[ok_all, 3:npk], axis=0) if ok_all.any() else None
    if shape_med is None:
        shape_med = np.array(
            [1.0 / (h / 3.0) ** 2] + ([0.0, 1.0 / (h / 3.0) ** 2] if not cfg.isotropic else [])
        )
    if cfg.fit_background:
        bg_prev = np.where(okm, st.start[members, -1], np.nan)
        with np.errstate(invalid="ignore"):
            bg = np.nanmean(np.where(okm.any(axis=1)[:, None], bg_prev, 0.0), axis=1)
        low = _low_percentile(data, mask)
        bg = np.where(okm.any(axis=1), bg, low)
        p0[:, -1] = bg
    else:
        bg = np.zeros(nc)
    grid = data.reshape(nc, k, k)
    amp_ok = np.where(okm, st.start[members, 0], 0.0)
    amp_ref = np.maximum(amp_ok.max(axis=1), 1e-6 * (np.abs(bg) + 1.0))
    for j in range(mem):
        ids = members[:, j]
        pk = ccfg.peak(p0, j)
        good = okm[:, j]
        pk[good] = st.start[ids[good], :npk]
        pk[~good, 1:3] = st.init[ids[~good]]
        pk[~good, 3:] = shape_med
        pk[:, 1:3] -= cen
        iy = np.clip(np.round(pk[:, 1]).astype(np.int64) + h, 0, k - 1)
        ix = np.clip(np.round(pk[:, 2]).astype(np.int64) + h, 0, k - 1)
        val = grid[np.arange(nc), iy, ix].astype(np.float64) - bg
        for o in range(mem):  # minus the other ok members' models at that pixel
            if o == j:
                continue
            po = st.start[members[:, o], :npk].copy()
            po[:, 1:3] -= cen
            dy, dx = iy - h - po[:, 1], ix - h - po[:, 2]
            a, b, c = (po[:, 3], 0.0, po[:, 3]) if cfg.isotropic else (po[:, 3], po[:, 4], po[:, 5])
            gv = np.exp(-0.5 * (a * dy * dy + 2 * b * dy * dx + c * dx * dx)) * po[:, 0]
            val -= np.where(okm[:, o], np.nan_to_num(gv), 0.0)
        pk[~good, 0] = np.clip(val[~good], 0.1 * amp_ref[~good], None)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        res = _lm_block(data, mask, p0, h, ccfg)
    rms = np.sqrt(res.rss / np.maximum(res.n_valid, 1))
    for j in range(mem):
        ids = members[:, j]
        pk = ccfg.peak(res.params, j)
        p_abs = np.empty((nc, cfg.n_params))
        p_abs[:, :npk] = pk
        p_abs[:, 1:3] += cen
        if cfg.fit_background:
            p_abs[:, -1] = res.params[:, -1]
        st.params[ids] = p_abs
        st.n_iter[ids] += res.n_iter
        st.rms[ids] = rms
        st.status[ids] = _classify(
            pk, p_abs, res, res.var_amp[:, j], ids, cfg, ccfg.n_params, st, lim
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            st.snr[ids] = np.nan_to_num(pk[:, 0] / np.sqrt(res.var_amp[:, j]))
        st.err[ids] = np.sqrt(res.var_pos[:, j])


def _prune_clusters(
    clusters: list[NDArray],
    st: _State,
    ok_prev: NDArray,
    merged_into: NDArray,
    merge_distance: float,
) -> tuple[list[NDArray], NDArray, NDArray]:
    """Check joint fits; drop the members that make a group fail.

    A group is accepted when every member fitted well and no two members sit on one peak.
    Otherwise its failed members leave it (keeping their failure status), or, where the whole
    group failed to converge, its least significant member; of two members that converged on
    one peak the weaker is merged into the stronger.  A spurious start next to a real column
    (a detector false positive) is the usual cause: fitted jointly, the two Gaussians share one
    peak and neither fit is determined.  Returns the groups to refit jointly, the peaks left
    alone (to refit as single peaks) and the dropped peaks.
    """
    again: list[NDArray] = []
    alone: list[int] = []
    dropped: list[int] = []
    for mem in clusters:
        good = st.status[mem] == _OK
        pos = st.params[mem, 1:3]
        if good.all():
            d = np.hypot(*(pos[:, None, :] - pos[None, :, :]).transpose(2, 0, 1))
            d[np.diag_indices(mem.size)] = np.inf
            i, j = np.unravel_index(np.argmin(d), d.shape)
            if d[i, j] >= merge_distance:
                continue
            weak, strong = (i, j) if st.params[mem[i], 0] < st.params[mem[j], 0] else (j, i)
            st.status[mem[weak]] = _MERGED
            merged_into[mem[weak]] = mem[strong]
            keep = np.ones(mem.size, dtype=bool)
            keep[weak] = False
        else:
            # members that failed on their own leave; those that only did not converge (held
            # up by a failing member) stay, unless all of them are in that state
            keep = good | (st.status[mem] == _MAX_ITER)
            if keep.all():
                keep[np.argmin(st.snr[mem])] = False
            elif not keep.any():
                # all failed (often a spurious member took over the real one's peak): the
                # member that was the strongest good fit before this pass, else the one with
                # the strongest fit now, gets a chance on its own
                before = np.where(ok_prev[mem], st.start[mem, 0], -np.inf)
                now = np.nan_to_num(st.params[mem, 0], nan=-np.inf)
                keep[np.argmax(before) if np.isfinite(before).any() else np.argmax(now)] = True
        rest = mem[keep]
        dropped.extend(mem[~keep].tolist())
        if rest.size >= 2:
            again.append(rest)
        else:
            alone.extend(rest.tolist())
    as_ids = functools.partial(np.asarray, dtype=np.int64)
    return again, as_ids(alone), as_ids(dropped)


def _low_percentile(data: NDArray, mask: NDArray, q: float = 0.2) -> NDArray:
    """Return the ``q`` quantile of the valid pixels of each window (0 where none is valid)."""
    n = len(data)
    valid = mask > 0
    nv = valid.sum(axis=1)
    srt = np.sort(np.where(valid, data, np.inf), axis=1)
    qi = np.clip(((nv - 1) * q).astype(np.int64), 0, None)
    out = srt[np.arange(n), qi].astype(np.float64)
    out[~np.isfinite(out)] = 0.0
    return out


def _classify(
    pk: NDArray,
    p_abs: NDArray,
    res: _BlockResult,
    var_amp: NDArray,
    ids: NDArray,
    cfg: _Cfg,
    n_params_fit: int,
    st: _State,
    lim: _Limits,
) -> NDArray:
    """Status of one Gaussian per row after a fit (``pk``: its A, y, x, shape)."""
    out = np.full(len(pk), _OK, dtype=np.int64)
    finite = np.isfinite(pk).all(axis=1) & np.isfinite(res.rss)
    with np.errstate(invalid="ignore", divide="ignore"):
        sy, sx, _ = _shape_params(pk, cfg)
        s_lo, s_hi = np.fmin(sy, sx), np.fmax(sy, sx)
        snr = pk[:, 0] / np.sqrt(var_amp)
    init = st.init[ids]
    moved = np.hypot(p_abs[:, 1] - init[:, 0], p_abs[:, 2] - init[:, 1]) > lim.shift[ids]
    bad_w = ~(s_lo >= lim.min_sigma) | ~(s_hi <= lim.max_sigma[ids])
    low = ~(pk[:, 0] > 0) | ~(snr >= lim.min_snr)
    out[~res.converged] = _MAX_ITER
    out[low] = _LOW_AMP
    out[bad_w] = _BAD_WIDTH
    out[moved] = _MOVED
    out[~finite] = _DIVERGED
    out[res.n_valid <= n_params_fit] = _DIVERGED
    return out


def _merge(st: _State, merged_into: NDArray, dist: float) -> None:
    """Merge fitted peaks closer than ``dist`` (duplicates that converged on one peak).

    The kept peak is the one whose start was closest to its fitted position (the more accurate
    detection; the fits of the duplicates agree), ties to the earlier row; the others get the
    status "merged" and ``merged_into`` the kept peak.
    """
    ok = np.nonzero(st.status == _OK)[0]
    if ok.size < 2:
        return
    pos = st.params[ok, 1:3]
    pairs = cKDTree(pos).query_pairs(dist, output_type="ndarray")
    if pairs.size == 0:
        return
    moved = np.hypot(*(pos - st.init[ok]).T)
    order = np.lexsort((ok, moved))  # best first
    nbrs: dict[int, list[int]] = {}
    for i, j in pairs:
        nbrs.setdefault(int(i), []).append(int(j))
        nbrs.setdefault(int(j), []).append(int(i))
    # greedy, best first: a peak is kept unless a kept peak within dist took it already
    kept = np.zeros(ok.size, dtype=bool)
    gone = np.zeros(ok.size, dtype=bool)
    for i in order[np.isin(order, list(nbrs))]:
        if gone[i]:
            continue
        kept[i] = True
        for j in nbrs[i]:
            if not kept[j] and not gone[j]:
                gone[j] = True
                merged_into[ok[j]] = ok[i]
                st.status[ok[j]] = _MERGED


def _empty_frame(index: pd.Index) -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=np.float64) for c in COLUMNS}, index=index[:0])
    df["fit_ok"] = df["fit_ok"].astype(bool)
    df["fit_status"] = df["fit_status"].astype(object)
    df["n_iter"] = df["n_iter"].astype(np.int64)
    df["merged_into"] = df["merged_into"].astype(np.int64)
    return df


def _frame(
    st: _State, merged_into: NDArray, index: pd.Index, cfg: _Cfg, drop_merged: bool
) -> pd.DataFrame:
    params, status, init = st.params, st.status, st.init
    ok = status == _OK
    fin = np.isfinite(params).all(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sy, sx, th = _shape_params(np.nan_to_num(params, nan=0.0), cfg)
    sy, sx, th = (np.where(fin, v, np.nan) for v in (sy, sx, th))
    bg = params[:, cfg.i_bg] if cfg.fit_background else np.where(fin, 0.0, np.nan)
    y = np.where(ok, params[:, 1], init[:, 0])
    x = np.where(ok, params[:, 2], init[:, 1])
    labels = np.asarray(index)
    into = np.where(merged_into >= 0, labels[np.maximum(merged_into, 0)], -1)
    df = pd.DataFrame(
        {
            "y": y,
            "x": x,
            "amplitude": params[:, 0],
            "amplitude_snr": st.snr,
            "y_err": np.where(ok, st.err[:, 0], np.nan),
            "x_err": np.where(ok, st.err[:, 1], np.nan),
            "sigma_y": sy,
            "sigma_x": sx,
            "theta": th,
            "background": bg,
            "fit_ok": ok,
            "fit_status": np.asarray(STATUSES, dtype=object)[status],
            "y_init": init[:, 0],
            "x_init": init[:, 1],
            "n_iter": st.n_iter,
            "residual_rms": st.rms,
            "merged_into": into,
        },
        index=index,
    )
    if drop_merged:
        df = df[status != _MERGED]
    return df


def fit_gaussian_at(
    image: ArrayLike,
    y: float,
    x: float,
    *,
    window: int | None = None,
    search_radius: float = 3.0,
    isotropic: bool = False,
    fit_background: bool = True,
    weights: str = "auto",
    max_iter: int = 50,
) -> pd.Series:
    """Snap one clicked point to the nearest intensity peak and refine it by a Gaussian fit.

    The brightest pixel of the lightly smoothed image (Gaussian, sigma 1 px) within
    ``search_radius`` of the click is taken as the start, and a single-peak fit from there
    gives the sub-pixel position.

    Parameters
    ----------
    image : array_like, shape (H, W)
        The image (bright peaks).
    y, x : float
        The clicked position (row, col) in pixels.
    window : int, optional
        Half-width of the fit window; default 6 px (13 × 13).
    search_radius : float
        Radius (px) around the click searched for the local maximum.
    isotropic, fit_background, weights, max_iter
        As in :func:`fit_gaussians`.

    Returns
    -------
    pandas.Series
        One row of :func:`fit_gaussians` (same fields).  ``y_init, x_init`` are the click; a
        failed fit falls back to the click.

    Examples
    --------
    >>> from napari_atomnet.synth import render_gaussians
    >>> img = render_gaussians((32, 32), [15.4], [16.7], [50.0], [1.8])
    >>> s = fit_gaussian_at(img, 14.0, 18.0)
    >>> round(float(s["y"]), 3), round(float(s["x"]), 3), bool(s["fit_ok"])
    (15.4, 16.7, True)
    """
    from scipy.ndimage import gaussian_filter

    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2D (H, W); got shape {img.shape}")
    if not (np.isfinite(y) and np.isfinite(x)):
        raise ValueError("the point must be finite")
    hh, ww = img.shape
    h = 6 if window is None else max(int(np.ceil(window)), 2)
    r = max(float(search_radius), 0.0)
    # local maximum in a lightly smoothed crop around the click
    pad = int(np.ceil(r)) + 4
    y0, y1 = max(int(np.floor(y)) - pad, 0), min(int(np.ceil(y)) + pad + 1, hh)
    x0, x1 = max(int(np.floor(x)) - pad, 0), min(int(np.ceil(x)) + pad + 1, ww)
    if y0 >= y1 or x0 >= x1:
        raise ValueError("the point is outside the image")
    crop = np.nan_to_num(img[y0:y1, x0:x1].astype(np.float64), nan=np.nanmin(img))
    sm = gaussian_filter(crop, 1.0, mode="nearest")
    rr, cc = np.mgrid[y0:y1, x0:x1]
    near = (rr - y) ** 2 + (cc - x) ** 2 <= r * r + 1e-9
    if not near.any():
        near = (rr == int(np.clip(round(y), y0, y1 - 1))) & (
            cc == int(np.clip(round(x), x0, x1 - 1))
        )
    vals = np.where(near, sm, -np.inf)
    d2 = (rr - y) ** 2 + (cc - x) ** 2
    # the brightest pixel; among equals (a flat region) the one nearest to the click
    iy, ix = np.unravel_index(np.argmin(np.where(vals == vals.max(), d2, np.inf)), sm.shape)
    start = np.array([[rr[iy, ix], cc[iy, ix]]], dtype=np.float64)
    df = fit_gaussians(
        img,
        start,
        window=h,
        isotropic=isotropic,
        fit_background=fit_background,
        neighbours="none",
        n_passes=2,
        max_iter=max_iter,
        weights=weights,
        max_shift=r + 0.75 * h,
    )
    row = df.iloc[0].copy()
    row["y_init"], row["x_init"] = float(y), float(x)
    if not row["fit_ok"]:
        row["y"], row["x"] = float(y), float(x)
    row.name = None
    return row


def columns_are_elliptical(
    image: ArrayLike,
    coords: ArrayLike,
    *,
    n_peaks: int = 400,
    threshold: float = 0.1,
    window: ArrayLike | None = None,
) -> bool:
    """Decide whether the columns of an image are measurably elliptical.

    Elliptical fits of up to ``n_peaks`` peaks (the brightest) give each a shape tensor
    ``e = (1 − (σ_minor/σ_major)²) · (cos 2θ, sin 2θ)``.  Noise makes round columns look
    elliptical in random directions, which average out; a real ellipticity (scan drift, astigmatism)
    has one direction and survives the average.  The columns are called elliptical when the mean
    tensor's length exceeds ``threshold`` (0.1 ≈ a 5 % axis ratio).  Round columns are then fitted
    with the isotropic model, whose fewer parameters keep low-dose fits closer to the Cramér–Rao
    bound.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Image with bright peaks.
    coords : array_like, shape (N, 2)
        Peak positions (y, x).
    n_peaks : int
        Peaks examined (the brightest at their start positions).
    threshold : float
        Length of the mean shape tensor above which the columns count as elliptical.
    window : array_like, optional
        Fit half-widths, as in :func:`fit_gaussians`.

    Returns
    -------
    bool
    """
    img = np.asarray(image, dtype=np.float64)
    pts = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 8:
        return False
    iy = np.clip(np.round(pts[:, 0]).astype(int), 0, img.shape[0] - 1)
    ix = np.clip(np.round(pts[:, 1]).astype(int), 0, img.shape[1] - 1)
    order = np.argsort(-img[iy, ix])[:n_peaks]
    win = None if window is None else np.broadcast_to(np.asarray(window, float), (len(pts),))[order]
    fit = fit_gaussians(img, pts[order], window=win, drop_merged=False)
    fit = fit[fit["fit_ok"]]
    if len(fit) < 8:
        return False
    sy, sx, th = (fit[c].to_numpy(float) for c in ("sigma_y", "sigma_x", "theta"))
    major = np.maximum(sy, sx)
    minor = np.minimum(sy, sx)
    # direction of the major axis: theta is the y-axis rotation; swap by 90° when x is major
    angle = np.where(sy >= sx, th, th + np.pi / 2)
    strength = 1.0 - (minor / major) ** 2
    mean = np.array([np.mean(strength * np.cos(2 * angle)), np.mean(strength * np.sin(2 * angle))])
    return bool(np.hypot(*mean) > threshold)


def median_standard_error(table: pd.DataFrame, y_err: str = "y_err", x_err: str = "x_err") -> float:
    """Return the median per-axis standard error of a table's rows (NaN when it has none).

    Parameters
    ----------
    table : pandas.DataFrame
        Rows with standard errors along y and x, e.g. refined atoms (``y_err``, ``x_err``) or
        cells (``disp_y_err``, ``disp_x_err``).
    y_err, x_err : str
        The columns.

    Examples
    --------
    >>> median_standard_error(pd.DataFrame({"y_err": [0.03, 0.05], "x_err": [0.03, 0.05]}))
    0.04
    """
    if y_err not in table or x_err not in table:
        return float("nan")
    err = np.sqrt((table[y_err].to_numpy(float) ** 2 + table[x_err].to_numpy(float) ** 2) / 2)
    err = err[np.isfinite(err)]
    return float(np.median(err)) if len(err) else float("nan")


def error_text(what: str, error: float, unit: str = "px") -> str:
    """Say a median per-axis standard error ("" when it is unknown: NaN).

    Examples
    --------
    >>> error_text("positions", 0.0671)
    'positions ± 0.067 px per axis (median standard error)'
    """
    if not np.isfinite(error):
        return ""
    return f"{what} ± {error:.2g} {unit} per axis (median standard error)"
