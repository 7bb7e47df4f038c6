"""Hugging Face causal language models (GPT-2 and kin) under lmwidget's model contract."""

from __future__ import annotations

import sys

import torch.nn as nn

from .builtin import GenerateMixin, lm_loss


def is_hf_causal_lm(model) -> bool:
    """A `transformers` causal language model: one of AutoModelForCausalLM's classes
    (GPT2LMHeadModel, LlamaForCausalLM, ...) or a subclass. Not a masked LM (BERT sees the
    tokens it predicts) nor an encoder-decoder. Never imports transformers: a model of it
    can only exist once it is imported."""
    transformers = sys.modules.get("transformers")
    base = getattr(transformers, "PreTrainedModel", None)
    if base is None or not isinstance(model, base):
        return False
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # another layout: trust the config
        return bool(getattr(model.config, "is_decoder", False))
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    return any(cls.__name__ in causal for cls in type(model).__mro__)


def adapt(model):
    """`model` itself, or a Hugging Face causal LM wrapped as `HFCausalLM`."""
    return HFCausalLM(model) if is_hf_causal_lm(model) else model


def unwrap(model):
    """The module the user passed: the Hugging Face model inside an `HFCausalLM`."""
    return model.model if isinstance(model, HFCausalLM) else model


class HFCausalLM(GenerateMixin, nn.Module):
    """forward(idx, targets) -> (logits, loss) and generate() around a Hugging Face causal LM.

    The targets are the next tokens already (lmwidget's batches are shifted by one), so the
    loss is taken here rather than by the model's own `labels=` (which shifts again). The
    wrapped model is `.model`; its state dict keys gain the prefix "model."."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        cfg = model.config
        self.vocab_size = cfg.vocab_size
        self.block_size = (getattr(cfg, "n_positions", None)
                           or getattr(cfg, "max_position_embeddings", None))

    def forward(self, idx, targets=None):
        logits = self.model(input_ids=idx, use_cache=False).logits
        return logits, lm_loss(logits, targets)

    def extra_repr(self) -> str:
        return f"{type(self.model).__name__}, vocab_size={self.vocab_size}, block_size={self.block_size}"
