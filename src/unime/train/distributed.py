"""All-gather of embeddings across data-parallel processes (torch.distributed, any backend).

Every process computes the loss over the *global* batch (all processes' queries and candidates), with
only its own slice attached to the autograd graph. Each process therefore gets the complete gradient
of the global loss with respect to its own embeddings. DistributedDataParallel then *averages* the
parameter gradients over the W processes, so the local slice's gradient is multiplied by W on the
way back: the average of W per-process contributions × W is their sum, the gradient of the global
loss. (The released UniME-V2 code does the same by multiplying its loss by the world size.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by `factor` on the way back."""

    @staticmethod
    def forward(ctx, tensor, factor: float):
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def _gather_pieces(tensor: torch.Tensor) -> list[torch.Tensor]:
    """All processes' tensors (dim 0 may differ between processes), as detached pieces."""
    w = world_size()
    local = tensor.detach().contiguous()
    size = torch.tensor([local.shape[0]], dtype=torch.long, device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(w)]
    dist.all_gather(sizes, size)
    sizes_int = [int(s.item()) for s in sizes]
    longest = max(sizes_int)
    if local.shape[0] < longest:  # all_gather needs equal shapes: pad, then trim
        pad = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
        local = torch.cat([local, pad])
    pieces = [torch.empty_like(local) for _ in range(w)]
    dist.all_gather(pieces, local)
    return [p[:n] for p, n in zip(pieces, sizes_int)]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0, in rank order.

    The local slice keeps its graph, with its gradient scaled by the world size (see the module
    docstring); the other slices are constants. Identity on a single process."""
    w = world_size()
    if w == 1:
        return tensor
    pieces = _gather_pieces(tensor)
    pieces[rank()] = _ScaleGradient.apply(tensor, float(w))
    return torch.cat(pieces)


def gather_constant(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Concatenate a tensor without gradient (e.g. judge scores) from every process, in rank order."""
    if tensor is None or world_size() == 1:
        return tensor
    return torch.cat(_gather_pieces(tensor))


def sum_over_processes(values: list[float]) -> list[float]:
    """Element-wise sums of `values` over every process, in the same order on each (the values themselves on
    one process). A collective: every process must call it, with as many values."""
    if world_size() == 1:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()
