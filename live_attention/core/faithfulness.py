"""How faithful a map is: the standard measures, as pure functions (torch and numpy, no I/O).

* **Pointing game** (Zhang et al. 2016): does the map's strongest patch fall on the object?
* **Perturbation curves** (Samek et al. 2016; Chefer, Gur & Wolf, CVPR 2021 §5; Petsiuk et al. 2018):
  the target class's probability as patches are removed (set to the dataset mean, 0 after
  normalisation) in 10 % steps. *Deletion*: most relevant first; a faithful map makes the probability
  fall fast (low area). *Insertion*: the most relevant patches put back first into an emptied image; it
  should rise fast (high area). Removing the least relevant first (Chefer's negative perturbation) keeps
  the most relevant (1 - s) of the patches at step s: the insertion curve read backwards, so its area
  is the insertion area and is not computed twice.
* **Model randomisation** (Adebayo et al., NeurIPS 2018): the rank correlation between a map and the
  same map after the top layers' weights are re-initialised. A map that does not change does not
  depend on what the model learned.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

Box = tuple[int, int, int, int]
STEPS = 10  # perturbation in 10 % steps: 11 points from 0 % to 100 %
ORDERS = ("deletion", "insertion")


def pointing_hit(values: Tensor | np.ndarray, grid: tuple[int, int], box: Box, cell: tuple[float, float]) -> bool:
    """Whether the map's argmax patch cell meets ``box`` (x0, y0, x1, y1; exclusive ends) in input pixels;
    ``cell`` is a patch's (width, height) in those pixels."""
    idx = int(np.argmax(np.asarray(values, dtype=np.float32)))
    r, c = divmod(idx, grid[1])
    cw, ch = cell
    x0, y0, x1, y1 = box
    return c * cw < x1 and (c + 1) * cw > x0 and r * ch < y1 and (r + 1) * ch > y0


def patch_masks(maps: Tensor, grid: tuple[int, int], patch: int, order: str, steps: int = STEPS) -> Tensor:
    """Pixel masks [steps + 1, B, 1, H, W] (1 = the original pixel stays) for each perturbation step.

    ``deletion`` removes the highest-valued patches first; ``insertion`` starts from nothing and puts the
    highest-valued back first. Ties break by patch index (stable order).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    b, p = maps.shape
    rank = torch.argsort(maps.float(), dim=1, descending=True, stable=True)  # [B, P], most relevant first
    pos = torch.empty_like(rank)
    pos.scatter_(1, rank, torch.arange(p, device=maps.device).expand(b, p))  # each patch's place in the order
    out = []
    for s in range(steps + 1):
        k = round(p * s / steps)
        chosen = pos < k  # the first k patches in the order
        keep = chosen if order == "insertion" else ~chosen
        m = keep.float().view(b, 1, *grid)
        out.append(m.repeat_interleave(patch, -2).repeat_interleave(patch, -1))
    return torch.stack(out)


def perturbation_curves(probability: Callable[[Tensor], Tensor], x: Tensor, maps: Tensor, grid: tuple[int, int],
                        patch: int, order: str, steps: int = STEPS) -> Tensor:
    """The target's probability [B, steps + 1] as ``x`` [B, 3, H, W] (normalised: 0 is the dataset mean)
    is perturbed in the order of ``maps`` [B, P]; ``probability(images)`` gives each image's target
    probability [B]."""
    masks = patch_masks(maps, grid, patch, order, steps).to(x.device)
    return torch.stack([probability(x * m) for m in masks], dim=1)


def area(curves: Tensor | np.ndarray) -> np.ndarray:
    """Area under each curve [..., steps + 1] over the fraction perturbed, 0 to 1 (trapezoids)."""
    c = np.asarray(curves, dtype=np.float64)
    return (c[..., 1:] + c[..., :-1]).sum(-1) / (2 * (c.shape[-1] - 1))


def spearman(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row pair of ``a`` and ``b`` [B, P] (ties ranked by order)."""
    def ranks(x: np.ndarray) -> np.ndarray:
        r = np.empty_like(x, dtype=np.float64)
        idx = np.argsort(x, axis=1, kind="stable")
        np.put_along_axis(r, idx, np.arange(x.shape[1], dtype=np.float64)[None].repeat(x.shape[0], 0), axis=1)
        return r

    ra, rb = ranks(np.asarray(a, dtype=np.float64)), ranks(np.asarray(b, dtype=np.float64))
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    return np.where(den > 0, (ra * rb).sum(1) / np.maximum(den, 1e-12), 0.0)


@torch.no_grad()
def reinitialise(blocks: list[nn.Module], seed: int = 0) -> None:
    """Re-initialise every parameter of ``blocks`` in place, seeded, as torchvision initialises a ViT's
    blocks (matrices Xavier-uniform, norm scales 1, biases 0): a step of the randomisation cascade.
    (Tiny N(0, 0.02²) weights would leave pre-norm blocks close to skipped ones, and every map close
    to what it was: a test that cannot fail.)"""
    g = torch.Generator().manual_seed(seed)
    for block in blocks:
        for name, p in block.named_parameters():
            if p.ndim >= 2:
                fan_out, fan_in = p.shape[0], p[0].numel()
                bound = (6.0 / (fan_in + fan_out)) ** 0.5
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
            else:
                p.fill_(1.0 if name.rsplit(".", 1)[-1] in ("weight", "gamma") else 0.0)
