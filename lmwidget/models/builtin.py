"""GPT and LSTM language models sharing one contract: forward(idx, targets) and generate."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MODELS = ("gpt", "lstm")


@torch.no_grad()
def sample_tokens(model, idx, max_new_tokens: int, block_size: int, temperature: float = 1.0,
                  top_k=None, vocab_size: int | None = None):
    """Autoregressive sampling from any model whose forward(idx) returns (logits, loss):
    `idx` (batch, time) grown by `max_new_tokens`, each conditioned on the last `block_size`
    tokens (all of them when `block_size` is None), drawn from the first `vocab_size`
    logits (a model may have more outputs than the data has tokens)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature}")
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block_size:] if block_size else idx)
        logits = logits[:, -1, :vocab_size] / temperature
        if top_k is not None:
            k = min(int(top_k), logits.size(-1))
            kth = torch.topk(logits, k).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, -float("inf"))
        probs = F.softmax(logits, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
    return idx


class GenerateMixin:
    """generate() for a model with a `block_size` (the longest context it takes)."""

    block_size: int

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k=None):
        return sample_tokens(self, idx, max_new_tokens, self.block_size, temperature, top_k)


def lm_loss(logits, targets):
    if targets is None:
        return None
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout)
        )

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(GenerateMixin, nn.Module):
    """A decoder-only transformer with learned positions and tied input/output embeddings."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 2, n_head: int = 4,
                 n_embd: int = 64, dropout: float = 0.0):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(
                f"n_embd must be divisible by n_head; got n_embd={n_embd}, n_head={n_head}"
            )
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, lm_loss(logits, targets)


class LSTM(GenerateMixin, nn.Module):
    """A multi-layer LSTM language model; it sees at most `block_size` tokens of context."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 2, n_embd: int = 128,
                 dropout: float = 0.0):
        super().__init__()
        self.block_size = block_size
        self.embed = nn.Embedding(vocab_size, n_embd)
        self.lstm = nn.LSTM(n_embd, n_embd, num_layers=n_layer, batch_first=True,
                            dropout=dropout if n_layer > 1 else 0.0)
        self.head = nn.Linear(n_embd, vocab_size)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx, targets=None):
        out, _ = self.lstm(self.embed(idx))
        logits = self.head(out)
        return logits, lm_loss(logits, targets)


def build_model(name: str, vocab_size: int, block_size: int, n_layer: int, n_head: int,
                n_embd: int, dropout: float) -> nn.Module:
    if name == "gpt":
        return GPT(vocab_size, block_size, n_layer, n_head, n_embd, dropout)
    if name == "lstm":
        return LSTM(vocab_size, block_size, n_layer, n_embd, dropout)
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}, or an nn.Module")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


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
    from .hf import unwrap
    from .pretrained import describe

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
