"""The model contract, checked before a run starts: forward(idx, targets) returns (logits, loss), and is causal."""

from __future__ import annotations

import torch

from .hf import unwrap
from .pretrained import describe


def check_user_model(model: torch.nn.Module, dataset, config, device):
    """One tiny forward pass, in eval mode and without gradients (each module's mode restored
    after it), that proves the model follows the contract and is causal, before any thread
    starts: its two rows differ in the last token only, so no earlier logits may change.

    Args:
        model: the model a run would train, on `device`.
        dataset: gives the batch (dataset.batch) and vocab_size.
        config: the run's options (block_size, and model as the message names it).
        device: where the batch goes.

    Raises:
        ValueError: no trainable parameters, a block_size beyond the model's, logits or loss of
            the wrong shape, or logits at a position that change with a later token (a
            bidirectional model, such as BERT without is_decoder).
        TypeError: forward(idx, targets) returned something other than (logits, loss).
    """
    name = type(unwrap(model)).__name__
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model {name} has no trainable parameters")
    limit = getattr(model, "block_size", None)
    if isinstance(limit, int) and config.block_size > limit:
        raise ValueError(f"block_size={config.block_size} exceeds model {name}'s block_size={limit}")
    x, y = dataset.batch("train", 1, min(8, config.block_size), torch.Generator().manual_seed(0))
    x, y = _last_changed(x, dataset.vocab_size).to(device), y.repeat(2, 1).to(device)
    out = _forward_eval(model, x, y)
    ok = isinstance(out, tuple) and len(out) == 2 and all(torch.is_tensor(t) for t in out)
    if not ok:
        raise TypeError(f"model {name}'s forward(idx, targets) must return (logits, loss) "
                        f"tensors; got {type(out).__name__}")
    logits, loss = out
    if logits.shape[:2] != x.shape or logits.shape[-1] < dataset.vocab_size or loss.ndim != 0:
        raise ValueError(
            f"model {name} returned logits of shape {tuple(logits.shape)} and loss of shape "
            f"{tuple(loss.shape)}; expected logits (batch, time, >= vocab_size="
            f"{dataset.vocab_size}) and a scalar loss")
    _check_causal_logits(logits, describe(model, config.model))


def _last_changed(idx: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(2, time): the first row of idx, and the same ids with the last one changed."""
    other = idx[:1].clone()
    other[0, -1] = (idx[0, -1] + 1) % max(vocab_size, 1)
    return torch.cat([idx[:1], other])


def _forward_eval(model: torch.nn.Module, idx, targets):
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # no dropout: the same ids give the same logits
    try:
        with torch.no_grad():
            return model(idx, targets)
    finally:
        for module, training in modes:
            module.training = training


def _check_causal_logits(logits: torch.Tensor, name: str) -> None:
    """logits[0] and [1] are of ids that differ in the last only: the earlier must not differ
    by more than rounding (a bidirectional model's move by far more, even freshly initialised)."""
    before, after = logits[0].float(), logits[1].float()
    if before.shape[0] < 2 or torch.equal(before[:-1], after[:-1]):
        return
    eps = torch.finfo(logits.dtype if logits.is_floating_point() else torch.float32).eps
    moved = (after[:-1] - before[:-1]).abs().amax(dim=-1) > 8 * eps * before.abs().amax()
    if moved.any():
        first = int(moved.nonzero()[0])
        raise ValueError(
            f"model {name} sees the future: its logits at position {first} changed when only the "
            f"last token (position {before.shape[0] - 1}) changed, so trained to predict each next "
            f"token it would learn to read it from its input. Accepted: a causal language model, "
            f"whose logits at each position depend only on the tokens up to it (GPT-2, Llama, a "
            f"BertLMHeadModel with is_decoder=True, or your module with a causal mask)")
