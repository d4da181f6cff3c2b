"""GradCache: a large contrastive batch in the memory of one chunk (SPEC §3).

Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", RepL4NLP 2021
(arXiv:2101.06983). A contrastive loss couples every embedding of the batch, but the encoder's
activations of one chunk of items are independent of the others. So:

1. forward every chunk *without* grad (no activations kept) and record the RNG state before each;
2. compute the loss on the concatenated, detached embeddings and the gradient d loss / d embedding;
3. for each chunk again: restore its RNG state (the same dropout masks), forward *with* grad, and
   back-propagate the cached gradient (`backward` of <embeddings, cached grad>).

Peak activation memory is that of one chunk, whatever the batch size; compute is one extra forward.

This is the loss-side ("hook") variant: `GradCache.loss` returns the loss as a detached leaf tensor
with a backward hook, and step 3 runs when the caller back-propagates it. The trainer's own
`backward` call — with its gradient-accumulation scaling (the hook multiplies the cached gradient by
the incoming one) and its DDP `no_sync` context — stays in charge, so it composes with gradient
accumulation, one device and DDP alike. Under DDP, all chunks but the last replay inside `no_sync`
so gradients are all-reduced once per step.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict) or hasattr(obj, "values") and hasattr(obj, "keys"):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


class RandomState:
    """The CPU RNG state and those of the accelerator devices holding `inputs`, captured now, so a
    forward pass can later be replayed with the same random draws (dropout masks)."""

    def __init__(self, inputs: Any = None):
        from torch.utils.checkpoint import get_device_states

        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*_tensors(inputs))

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block with the captured states; the global RNG streams are restored afterwards."""
        from torch.utils.checkpoint import set_device_states

        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu_state)
            if self.devices:
                set_device_states(self.devices, self.device_states)
            yield


class GradCache:
    """Gradient caching over chunks of model inputs.

    `encode(chunk) -> (n, d)` embeds one chunk (gradients flow to the model when enabled);
    `loss_fn(reps) -> scalar` computes the loss from the concatenated embeddings of all chunks.
    `restore_rng=False` disables the RNG replay (only useful to show that it matters).
    """

    def __init__(self, *, restore_rng: bool = True):
        self.restore_rng = restore_rng

    def loss(self, encode: Callable[[Any], torch.Tensor], chunks: Sequence[Any],
             loss_fn: Callable[[torch.Tensor], torch.Tensor], *,
             no_sync: Callable[[], contextlib.AbstractContextManager] | None = None) -> torch.Tensor:
        """The loss of the whole batch. If gradients are enabled it is a leaf tensor whose backward
        replays the chunks (step 3); `no_sync`, if given, is entered for every chunk but the last."""
        if not chunks:
            raise ValueError("GradCache needs at least one chunk")
        if not torch.is_grad_enabled():
            return loss_fn(torch.cat([encode(c) for c in chunks]))
        states, pieces = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(RandomState(chunk) if self.restore_rng else None)
                pieces.append(encode(chunk))
        reps = torch.cat(pieces).detach().requires_grad_(True)
        loss = loss_fn(reps)
        (grad,) = torch.autograd.grad(loss, reps)
        cached = grad.split([p.shape[0] for p in pieces])
        del pieces, reps

        def replay(grad_output: torch.Tensor) -> None:
            last = len(chunks) - 1
            for i, (chunk, chunk_grad, state) in enumerate(zip(chunks, cached, states)):
                sync = no_sync() if no_sync is not None and i < last else contextlib.nullcontext()
                # autograd runs hooks with grad mode off
                with sync, torch.enable_grad():
                    with state.replay() if state is not None else contextlib.nullcontext():
                        chunk_reps = encode(chunk)
                    surrogate = torch.dot(chunk_reps.flatten(), chunk_grad.to(chunk_reps.dtype).flatten())
                    (surrogate * grad_output.to(surrogate.dtype)).backward()

        out = loss.detach().requires_grad_(True)
        out.register_hook(replay)
        return out
