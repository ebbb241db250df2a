"""Inference-only fixed-point solvers for deep equilibrium (DEQ) models: z* = f(z*).

Three solvers, as in DEQ-Flow (Bai, Geng, Savani & Kolter, CVPR 2022, github.com/locuslab/deq-flow):
plain fixed-point iteration (``naive``), Anderson acceleration and Broyden's method (no line search).
They run under ``torch.no_grad`` semantics only: nothing here builds a graph for training.

States are flat batches ``z``: B×D float tensors, and ``f`` maps B×D → B×D. Every sample keeps its own
residual, its own best iterate and its own stopping decision, and a sample that has converged is frozen,
so a batch returns what each of its samples returns when solved alone. (The official code stops a batch
only when all samples converge; with its batch size of 1 at evaluation the two agree.)

Residuals are ``abs = ‖f(z) − z‖₂`` and ``rel = abs / (‖f(z)‖₂ + 1e-8)`` per sample; ``stop_mode`` picks
which one is compared with ``eps`` and which one chooses the returned iterate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Func = Callable[[torch.Tensor], torch.Tensor]

STOP_MODES = ("abs", "rel")
REL_EPS = 1e-8  # denominator guard of the relative residual, as in deq-flow v2
BROYDEN_STALL_WINDOW = 30  # Broyden gives up when the last 30 residuals vary by < 1.3× and are < 3 eps


@dataclass(frozen=True)
class SolverResult:
    """The returned iterate and how good it is, per sample.

    z: B×D, the iterate with the lowest residual in ``stop_mode`` (see each solver for which iterate).
    abs_residual, rel_residual: B, the residuals recorded for ``z``.
    nstep: B int64, the step (number of evaluations of ``f`` so far) at which ``z`` was recorded.
    """

    z: torch.Tensor
    abs_residual: torch.Tensor
    rel_residual: torch.Tensor
    nstep: torch.Tensor


class _BestIterate:
    """Per-sample record of the best iterate so far and of which samples are still being solved.

    ``slack`` > 0 accepts an iterate whose residual is up to ``slack`` above the recorded one; the
    official naive solver uses 1 (its ``lowest + return_final`` test), so it returns the last iterate
    unless the residual jumped by more than 1.
    """

    def __init__(self, z0: torch.Tensor, *, eps: float, stop_mode: str, slack: float = 0.0):
        if stop_mode not in STOP_MODES:
            raise ValueError(f"stop_mode: expected one of {STOP_MODES}, got {stop_mode!r}")
        b = z0.shape[0]
        self.eps, self.stop_mode, self.slack = eps, stop_mode, slack
        self.z = z0.clone()
        self.abs = z0.new_full((b,), float("inf"))
        self.rel = z0.new_full((b,), float("inf"))
        self.recorded = z0.new_full((b,), float("inf"))
        self.nstep = torch.zeros(b, dtype=torch.int64, device=z0.device)
        self.active = torch.ones(b, dtype=torch.bool, device=z0.device)

    def residual(self, abs_res: torch.Tensor, rel_res: torch.Tensor) -> torch.Tensor:
        return abs_res if self.stop_mode == "abs" else rel_res

    def offer(self, z: torch.Tensor, abs_res: torch.Tensor, rel_res: torch.Tensor, step: int) -> torch.Tensor:
        """Record ``z`` where it is the best so far; returns the stop-mode residual (B)."""
        res = self.residual(abs_res, rel_res)
        take = self.active & (res < self.recorded + self.slack)
        self.z = torch.where(take[:, None], z, self.z)
        self.abs = torch.where(take, abs_res, self.abs)
        self.rel = torch.where(take, rel_res, self.rel)
        self.recorded = torch.where(take, res, self.recorded)
        self.nstep = torch.where(take, torch.full_like(self.nstep, step), self.nstep)
        return res

    def finish(self, converged: torch.Tensor) -> bool:
        """Freeze the samples in ``converged`` (B bool); True when none is left to solve."""
        self.active &= ~converged
        return not bool(self.active.any())

    def result(self) -> SolverResult:
        return SolverResult(self.z, self.abs, self.rel, self.nstep)


def _residuals(fz: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    abs_res = (fz - z).norm(dim=1)
    return abs_res, abs_res / (fz.norm(dim=1) + REL_EPS)


def _check(z0: torch.Tensor, threshold: int) -> None:
    if z0.ndim != 2:
        raise ValueError(f"z0: expected a flat batch B×D, got shape {tuple(z0.shape)}")
    if threshold < 1:
        raise ValueError(f"threshold: expected at least 1 step, got {threshold}")


@torch.no_grad()
def naive_solver(
    f: Func, z0: torch.Tensor, *, threshold: int, eps: float = 1e-3, stop_mode: str = "abs"
) -> SolverResult:
    """Fixed-point iteration z ← f(z), ``threshold`` evaluations of ``f`` at most.

    Returns the last image f(z) (see :class:`_BestIterate` for the official slack of 1 that can keep
    an earlier one); stops a sample once its residual is below ``eps``.
    """
    _check(z0, threshold)
    best = _BestIterate(z0, eps=eps, stop_mode=stop_mode, slack=1.0)
    z = z0
    for k in range(threshold):
        fz = f(z)
        res = best.offer(fz, *_residuals(fz, z), step=k + 1)
        if best.finish(res < eps):
            break
        z = fz
    return best.result()


@torch.no_grad()
def anderson(
    f: Func,
    z0: torch.Tensor,
    *,
    threshold: int,
    eps: float = 1e-3,
    stop_mode: str = "abs",
    m: int = 6,
    lam: float = 1e-4,
    beta: float = 1.0,
    return_image: bool = True,
) -> SolverResult:
    """Anderson acceleration (type II, memory ``m``, Tikhonov ``lam``, mixing ``beta``), ``threshold``
    evaluations of ``f`` at most.

    Each step solves the bordered least-squares system for weights α (Σα = 1) minimising
    ‖Σ α_i (f(x_i) − x_i)‖² + lam‖α‖² over the last ``m`` iterates, then
    x ← β Σ α_i f(x_i) + (1−β) Σ α_i x_i.
    ``return_image`` picks what a step offers as its result: f(x_k) (deq-flow v2) or the mixed
    iterate x_k itself (deq-flow v1). The first two iterates are never returned.
    """
    _check(z0, threshold)
    b, d = z0.shape
    X = z0.new_zeros(b, m, d)
    F = z0.new_zeros(b, m, d)
    X[:, 0], F[:, 0] = z0, f(z0)
    X[:, 1], F[:, 1] = F[:, 0], f(F[:, 0])
    # Bordered system [[0, 1ᵀ], [1, GGᵀ + lam I]] [ν, α] = [1, 0]: the first row enforces Σα = 1.
    H = z0.new_zeros(b, m + 1, m + 1)
    H[:, 0, 1:] = H[:, 1:, 0] = 1
    y = z0.new_zeros(b, m + 1, 1)
    y[:, 0] = 1
    best = _BestIterate(z0, eps=eps, stop_mode=stop_mode)
    for k in range(2, threshold):
        n = min(k, m)
        G = F[:, :n] - X[:, :n]
        eye = torch.eye(n, dtype=z0.dtype, device=z0.device)[None]
        H[:, 1 : n + 1, 1 : n + 1] = torch.bmm(G, G.transpose(1, 2)) + lam * eye
        alpha = torch.linalg.solve(H[:, : n + 1, : n + 1], y[:, : n + 1])[:, 1 : n + 1, 0]
        X[:, k % m] = beta * (alpha[:, None] @ F[:, :n])[:, 0] + (1 - beta) * (alpha[:, None] @ X[:, :n])[:, 0]
        F[:, k % m] = f(X[:, k % m])
        fx, x = F[:, k % m], X[:, k % m]
        res = best.offer(fx if return_image else x, *_residuals(fx, x), step=k + 1)
        if best.finish(res < eps):
            break
    return best.result()


def _matvec(us: torch.Tensor, vts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(−I + U Vᵀ) x for a batch: us B×D×L, vts B×L×D (L rank-one terms), x B×D."""
    if us.shape[-1] == 0:
        return -x
    return -x + torch.einsum("bdl,bl->bd", us, torch.einsum("bld,bd->bl", vts, x))


def _rmatvec(us: torch.Tensor, vts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """xᵀ (−I + U Vᵀ) for a batch, as a B×D tensor (shapes as in :func:`_matvec`)."""
    if us.shape[-1] == 0:
        return -x
    return -x + torch.einsum("bl,bld->bd", torch.einsum("bd,bdl->bl", x, us), vts)


@torch.no_grad()
def broyden(f: Func, z0: torch.Tensor, *, threshold: int, eps: float = 1e-3, stop_mode: str = "abs") -> SolverResult:
    """Broyden's ("good") method on g(z) = f(z) − z with a full step, ``threshold`` steps at most
    (``threshold`` + 1 evaluations of ``f``).

    The inverse Jacobian estimate starts at −I and is kept as −I + Σ u vᵀ (Sherman–Morrison updates).
    Returns the iterate z_k with the lowest residual; a sample also stops when, after 30 steps, its
    residual is below 3·eps and its last 30 residuals vary by less than 1.3×.
    """
    _check(z0, threshold)
    b, d = z0.shape
    # U is stored B×D×L as upstream does, so the einsum reductions (and the float results) match it.
    us = z0.new_zeros(b, d, threshold)
    vts = z0.new_zeros(b, threshold, d)
    best = _BestIterate(z0, eps=eps, stop_mode=stop_mode)
    x = z0
    gx = f(x) - x
    update = gx  # −(−I) g: the first step is one fixed-point iteration
    trace: list[torch.Tensor] = []
    for nstep in range(1, threshold + 1):
        x_new = x + update
        gx_new = f(x_new) - x_new
        dx, dg = x_new - x, gx_new - gx
        x, gx = x_new, gx_new
        abs_res = gx.norm(dim=1)
        res = best.offer(x, abs_res, abs_res / ((gx + x).norm(dim=1) + REL_EPS), step=nstep)
        trace.append(res)
        converged = res < eps
        if nstep > BROYDEN_STALL_WINDOW:
            window = torch.stack(trace[-BROYDEN_STALL_WINDOW:])
            converged |= (res < 3 * eps) & (window.max(0).values / window.min(0).values < 1.3)
        if best.finish(converged) or nstep == threshold:
            break
        part_us, part_vts = us[:, :, : nstep - 1], vts[:, : nstep - 1]
        vt = _rmatvec(part_us, part_vts, dx)
        u = (dx - _matvec(part_us, part_vts, dg)) / torch.einsum("bd,bd->b", vt, dg)[:, None]
        # A zero denominator (no change in g) gives NaNs: drop that rank-one term, as the official code does.
        vts[:, nstep - 1] = torch.where(vt.isnan(), 0.0, vt)
        us[:, :, nstep - 1] = torch.where(u.isnan(), 0.0, u)
        update = -_matvec(us[:, :, :nstep], vts[:, :nstep], gx)
    return best.result()


SOLVERS: dict[str, Callable[..., SolverResult]] = {
    "naive": naive_solver,
    "anderson": anderson,
    "broyden": broyden,
}


def get_solver(name: str) -> Callable[..., SolverResult]:
    """The solver called ``name`` (naive, anderson, broyden)."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"solver: expected one of {sorted(SOLVERS)}, got {name!r}") from None
