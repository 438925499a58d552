"""SIGReg: sketched isotropic-Gaussian regularizer (LeJEPA / LeWorldModel).

Project the batch of embeddings on K random unit directions; for each 1-D
projection compare its empirical characteristic function (ECF) with the
standard normal's, exp(-t^2/2), on t in [0, t_max]; integrate the squared error
with the window exp(-t^2/2) (trapezoid rule) and multiply by N: the
Epps-Pulley statistic. Average over directions. Under DistributedDataParallel
the ECF is averaged over ranks first, so the statistic is the global batch's.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def _knots(n_knots: int, t_max: float, device, dtype):
    t = torch.linspace(0.0, t_max, n_knots, device=device, dtype=dtype)   # (T,)
    w = torch.full_like(t, t_max / (n_knots - 1))
    w[0] = w[-1] = w[0] / 2                                               # trapezoid
    return t, w * torch.exp(-0.5 * t**2)                                  # window


def epps_pulley(x: torch.Tensor, n_knots: int = 17, t_max: float = 3.0, global_batch: bool = True) -> torch.Tensor:
    """x (N, K) projections -> (K,) Epps-Pulley statistics against N(0, 1).

    global_batch: under torch.distributed, the statistic of all ranks' samples together
    (a collective: every rank must call it); False: of this rank's samples only (monitors
    that one rank computes, or that every rank computes on the same data)."""
    n = x.shape[0]
    t, w = _knots(n_knots, t_max, x.device, x.dtype)
    xt = x.unsqueeze(-1) * t                                              # (N, K, T)
    re, im = torch.cos(xt).mean(0), torch.sin(xt).mean(0)                 # (K, T) ECF
    if global_batch and dist.is_available() and dist.is_initialized():
        ecf = torch.stack([re, im]) * n
        dist.all_reduce(ecf)                                              # sum over ranks
        n_total = torch.tensor([float(n)], device=x.device)
        dist.all_reduce(n_total)
        re, im = ecf[0] / n_total, ecf[1] / n_total
        n = float(n_total.item())
    err = (re - torch.exp(-0.5 * t**2)) ** 2 + im**2                       # (K, T)
    return (err * w).sum(-1) * n


def sigreg(z: torch.Tensor, n_proj: int = 256, generator: torch.Generator | None = None,
           n_knots: int = 17, t_max: float = 3.0, global_batch: bool = True) -> torch.Tensor:
    """z (N, D) embeddings -> scalar SIGReg loss (mean Epps-Pulley over n_proj directions)."""
    d = z.shape[-1]
    dirs = torch.randn(d, n_proj, generator=generator, device="cpu").to(z)  # same on every rank
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    return epps_pulley(z @ dirs, n_knots, t_max, global_batch).mean()


@torch.no_grad()
def collapse_stats(z: torch.Tensor) -> dict[str, float]:
    """Monitors of representation collapse for z (N, D).

    effective_rank: exp(entropy of the normalized singular values) of the
    centered batch (1 = collapsed to a line, D = isotropic).
    """
    z = z.float()
    zc = z - z.mean(0)
    s = torch.linalg.svdvals(zc)
    p = s / s.sum().clamp_min(1e-12)
    erank = float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
    std = z.std(0)
    return {"effective_rank": erank, "std_mean": float(std.mean()), "std_min": float(std.min()),
            "std_max": float(std.max())}
