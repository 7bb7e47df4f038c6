"""What lmwidget's loop takes from its model between two steps without disturbing training: a text sample, one fresh batch's gradients."""

from __future__ import annotations

import torch

from lmwidget.models.builtin import GenerateMixin, sample_tokens


def _forked(device: torch.device):
    """torch's global RNG (and the device's) as they were once the block ends."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                 device_type=device.type)


def sample_text(model: torch.nn.Module, tokenizer, block_size: int, seed: int,
                max_new_tokens: int, device: torch.device) -> str:
    """Text from `model`, drawn with its own RNG seeded by `seed` (the training's untouched).

    Args:
        model: the plain (not compiled) model; put back in training mode afterwards.
        tokenizer: the run's tokenizer (its start_id begins the text).
        block_size: the longest context the run trains on.
        seed: the sample's seed.
        max_new_tokens: how many tokens to draw.
        device: where the model is.

    Returns:
        The decoded text, without the start token.
    """
    with _forked(device):
        torch.manual_seed(seed)
        model.eval()
        try:
            idx = torch.full((1, 1), tokenizer.start_id, dtype=torch.long, device=device)
            own = getattr(model, "generate", None)
            if callable(own) and not isinstance(model, GenerateMixin):
                out = own(idx, max_new_tokens)  # the user's model's own sampler
            else:  # ours: a context no longer than the run trains on, and its tokens only
                limit = getattr(model, "block_size", None) or block_size
                out = sample_tokens(model, idx, max_new_tokens, min(limit, block_size),
                                    vocab_size=tokenizer.vocab_size)
        finally:
            model.train()
    return tokenizer.decode(out[0, 1:].tolist())


def fresh_grads(forward, data, params: list, batch_size: int, block_size: int, autocast,
                seed: int, device: torch.device) -> list:
    """The gradients of `params` on one fresh training batch at the current weights: no
    update, nothing left in `.grad`, and no draw from the training's RNG streams.

    Args:
        forward: the model's forward (one process's: no collective).
        data: the run's Dataset.
        params: the parameters whose gradients are wanted.
        batch_size: rows of the batch.
        block_size: tokens per row.
        autocast: the run's autocast context.
        seed: the batch's seed.
        device: where the run trains.

    Returns:
        One gradient per parameter (None where it takes no part in the loss).
    """
    gen = torch.Generator().manual_seed(seed)
    with _forked(device):
        x, y = data.batch("train", batch_size, block_size, gen)
        with autocast:
            _, loss = forward(x, y)
        return list(torch.autograd.grad(loss, params, allow_unused=True))
