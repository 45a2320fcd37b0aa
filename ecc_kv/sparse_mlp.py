"""Dynamic sparse MLPs: the SwiGLU reference, mask sequences, and real activation traces.

The weight cache (``ecc_kv.weight_cache``) is only worth its keep against the masks real
models produce, so this module makes both kinds: synthetic sequences with a controlled
churn (random walk, fixed top-k, unions over a batch) and masks recorded from a real
model on real text (top-k of |act| per token, where act is the input of ``down_proj``).
Every benchmark method is checked against :func:`masked_mlp_reference`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MASK_KINDS: tuple[str, ...] = ("random_walk", "fixed_topk", "union")


def mlp_forward(
    x: torch.Tensor, gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """SwiGLU MLP (ReLU MLP when ``gate`` is None) on the given weights, in their dtype.

    x: [B, H]; gate, up: [n, H]; down: [H, n] -> [B, H]. Strided views (the weight
    cache's) go to BLAS as they are: F.linear transposes them logically, never copies.
    """
    u = F.linear(x, up)  # [B, n]
    h = F.silu(F.linear(x, gate)) * u if gate is not None else F.relu(u)
    return F.linear(h, down)  # [B, H]


def masked_mlp_reference(
    x: torch.Tensor, gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The dense MLP with the inactive neurons' activations zeroed, in float32: the oracle.

    x: [B, H]; gate, up: [N, H]; down: [H, N]; mask: bool [N].
    """
    xf = x.float()
    u = xf @ up.float().t()  # [B, N]
    h = F.silu(xf @ gate.float().t()) * u if gate is not None else F.relu(u)
    return (h * mask.to(h.device, h.dtype)) @ down.float().t()  # [B, H]


def churn_count(churn: int | float, m: int) -> int:
    """Neurons swapped per step: an int is a count, a float a fraction of m in [0, 1] (1.0 = all)."""
    if isinstance(churn, bool) or not isinstance(churn, (int, float)):
        raise TypeError(f"churn must be an int count or a float fraction, got {churn!r}")
    if isinstance(churn, float):
        if not 0 <= churn <= 1:
            raise ValueError(f"churn={churn!r}: a float churn is a fraction of m and must lie in [0, 1]")
        return int(round(churn * m))
    if churn < 0:
        raise ValueError(f"churn={churn!r}: a count must be >= 0")
    return churn


def random_walk_masks(n: int, m: int, churn: float, steps: int, *, seed: int = 0) -> torch.Tensor:
    """bool [steps, n]: m active neurons; each step swaps ``churn`` of them for inactive ones.

    ``churn`` is an int count or a float fraction of m (see :func:`churn_count`); A = R = k
    on every step.
    """
    if not 0 <= m <= n:
        raise ValueError(f"m must be in [0, n={n}], got {m}")
    k = min(churn_count(churn, m), m, n - m)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    act, ina = perm[:m].clone(), perm[m:].clone()  # [m], [n - m]
    out = torch.zeros(steps, n, dtype=torch.bool)
    for t in range(steps):
        if t:
            i = torch.randperm(m, generator=g)[:k]
            j = torch.randperm(n - m, generator=g)[:k]
            act[i], ina[j] = ina[j].clone(), act[i].clone()
        out[t, act] = True
    return out


def topk_masks(scores: torch.Tensor, m: int) -> torch.Tensor:
    """bool [T, N]: the m largest scores of each row (e.g. |act| per token)."""
    idx = scores.topk(m, dim=-1).indices  # [T, m]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)


def drifting_topk_masks(n: int, m: int, steps: int, *, drift: float = 0.1, seed: int = 0) -> torch.Tensor:
    """bool [steps, n]: top-m of a score vector that drifts (AR(1)): fixed size, organic churn."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, generator=g)
    rows = []
    for _ in range(steps):
        s = (1 - drift**2) ** 0.5 * s + drift * torch.randn(n, generator=g)
        rows.append(s.clone())
    return topk_masks(torch.stack(rows), m)


def union_masks(per_token: torch.Tensor, batch: int) -> torch.Tensor:
    """bool [T // batch, N]: the union of each group of ``batch`` consecutive per-token masks.

    A batched decode step must run every neuron any of its sequences needs.
    """
    t = per_token.shape[0] // batch * batch
    if t == 0:
        raise ValueError(f"need at least batch={batch} masks, got {per_token.shape[0]}")
    return per_token[:t].view(-1, batch, per_token.shape[1]).any(dim=1)


@dataclass
class MLPTrace:
    """One layer of a real model on real text: its MLP weights, inputs and activations."""

    gate: torch.Tensor  # [N, H]
    up: torch.Tensor  # [N, H]
    down: torch.Tensor  # [H, N]
    x: torch.Tensor  # [T, H] inputs of the MLP (after the post-attention norm)
    act: torch.Tensor  # [T, N] inputs of down_proj: silu(gate x) * up x
    layer: int


@torch.no_grad()
def record_mlp_trace(model: torch.nn.Module, input_ids: torch.Tensor, layer: int) -> MLPTrace:
    """Run ``model`` on ``input_ids`` [1, T] and record layer ``layer``'s MLP inputs and activations.

    Works for Llama-architecture models from transformers (``model.model.layers[i].mlp``
    with ``gate_proj``, ``up_proj``, ``down_proj``).
    """
    layers = model.model.layers
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer must be in [0, {len(layers)}), got {layer}")
    mlp = layers[layer].mlp
    seen: dict[str, torch.Tensor] = {}

    def grab_x(_mod: torch.nn.Module, args: tuple) -> None:
        seen["x"] = args[0].detach()

    def grab_act(_mod: torch.nn.Module, args: tuple) -> None:
        seen["act"] = args[0].detach()

    hooks = [mlp.register_forward_pre_hook(grab_x), mlp.down_proj.register_forward_pre_hook(grab_act)]
    try:
        model(input_ids=input_ids, use_cache=False)
    finally:
        for hk in hooks:
            hk.remove()
    return MLPTrace(
        gate=mlp.gate_proj.weight.detach().float().clone(),
        up=mlp.up_proj.weight.detach().float().clone(),
        down=mlp.down_proj.weight.detach().float().clone(),
        x=seen["x"].reshape(-1, seen["x"].shape[-1]).float(),
        act=seen["act"].reshape(-1, seen["act"].shape[-1]).float(),
        layer=layer,
    )
