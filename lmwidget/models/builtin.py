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


