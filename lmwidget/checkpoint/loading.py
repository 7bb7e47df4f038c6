"""What a checkpoint must pass before use: a whole file, no code, the keys resuming reads, fitting weights."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from lmwidget.errors import CheckpointError  # noqa: F401 (its callers import it from here too)
from lmwidget.system.torchfile import check_archive, check_tensors, damaged, refused
from lmwidget.models import pretrained
from lmwidget.models.builtin import MODELS, build_model

# what resuming a run's checkpoint reads (those of 0.1.0 hold it all too), by where it lies
NEEDED = {(): ("config", "trainer", "history", "data_sha256"),
          ("trainer",): ("step", "base_lr", "grad_clip", "model", "optimizer", "rng", "anomaly",
                         "best_val_loss", "callbacks"),
          ("trainer", "rng"): ("batch", "eval", "torch", "cuda", "python", "numpy"),
          ("history",): ("columns", "events", "resources", "clock")}
DICTS = (("config",), ("trainer",), ("history",), ("trainer", "model"), ("trainer", "optimizer"),
         ("trainer", "rng"), ("history", "columns"))
_ABSENT = object()


def load(path: Path) -> object:
    """torch.load(path, weights_only=True) of a file first checked to be a whole zip archive of
    stored records, as torch.save writes; its tensors checked to hold no more than the file.
    Every refusal is a CheckpointError naming the file, and never advises loading unsafely."""
    check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise damaged(path, e) from None
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds {refused(str(e))}. lmwidget loads only "
            f"tensors and plain values (torch.load with weights_only=True), so nothing in it ran "
            f"and nothing was loaded") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        raise damaged(path, e) from None
    check_tensors(payload, path)
    return payload


def check_keys(payload: dict) -> None:
    """Refuse a run's checkpoint that lacks what resuming reads, naming each missing key: a
    valid digest proves the file unchanged since it was written, not that it is whole."""
    missing = [_label(where + (key,)) for where, keys in NEEDED.items()
               if isinstance(part := _part(payload, where), dict) for key in keys if key not in part]
    if "vocab" not in payload and "tokenizer" not in payload:
        missing.append("vocab (or tokenizer)")
    wrong = [f"has {_label(where)} as a {type(part).__name__}, not a dict" for where in DICTS
             if (part := _part(payload, where)) is not _ABSENT and not isinstance(part, dict)]
    if missing or wrong:
        raise CheckpointError(
            f"checkpoint {payload['path']} " + "; ".join(
                ([f"lacks {', '.join(missing)}"] if missing else []) + wrong)
            + ": it is incomplete, or not a checkpoint of lmwidget.train (run.save() writes one). "
            "Nothing was loaded")


def _part(payload: dict, where: tuple):
    for key in where:
        if not isinstance(payload, dict) or key not in payload:
            return _ABSENT
        payload = payload[key]
    return payload


def _label(where: tuple) -> str:
    return where[0] + "".join(f"[{key!r}]" for key in where[1:])


def check_model(payload: dict, config, vocab_size: int) -> None:
    """Refuse saved weights that do not fit the model `config` builds, before it is built: it is
    made on the meta device (names and shapes, no memory), so options edited to ask for a huge
    model cost nothing. Its weights must also lie on distinct bytes of the file."""
    with torch.device("meta"):
        if isinstance(config.model, str) and config.model in MODELS:
            model = build_model(config.model, vocab_size, config.block_size, config.n_layer,
                                config.n_head, config.n_embd, config.dropout)
            heads = f", n_head={config.n_head}" if config.model == "gpt" else ""
            what = (f"{config.model} with n_layer={config.n_layer}{heads}, n_embd={config.n_embd}, "
                    f"block_size={config.block_size} and {vocab_size:,} tokens")
        elif pretrained.is_directory(config.model):
            model = pretrained.skeleton(config.model)
            what = f"{type(model).__name__} from {config.model}"
        else:  # the user's own module: built already, and checked before it is loaded
            return
    path, saved = payload["path"], payload["trainer"]["model"]
    own = model.state_dict(keep_vars=True)  # keep_vars: a tied weight is one Parameter
    need = sum(t.numel() * t.element_size() for t in {id(t): t for t in own.values()}.values())
    check_fits(model, saved, path, f"the model its options describe ({what}: {_size(need)} of "
                                   f"weights), so it was not built")
    held = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in saved.values() if torch.is_tensor(t)}.values())
    if need > held:
        raise CheckpointError(
            f"the weights in checkpoint {path} lie on {held:,} bytes of it, but the model its "
            f"options describe ({what}) needs {need:,}: weights that are separate in the model "
            f"share bytes in the file, which run.save() never writes. The model was not built")


def check_fits(model: torch.nn.Module, saved: dict, path: str, what: str | None = None) -> None:
    """Refuse saved weights that do not fit `model` exactly, naming what differs; `what` names
    the model in the message (by default its class)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    label = "model" if what is None else "the options imply"
    shapes = [f"{k}: saved {_shape(saved[k])}, {label} {tuple(own[k].shape)}" for k in own
              if k in saved and (not torch.is_tensor(saved[k]) or saved[k].shape != own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"missing {', '.join(missing[:5])}{_more(missing)}" if missing else "",
                 f"unexpected {', '.join(unexpected[:5])}{_more(unexpected)}" if unexpected else "",
                 f"different shapes ({'; '.join(shapes[:5])}{_more(shapes)})" if shapes else ""]
        raise CheckpointError(f"the weights in checkpoint {path} do not fit "
                              f"{what or 'model ' + type(model).__name__}: "
                              + "; ".join(p for p in parts if p))


def _shape(value) -> str:
    return str(tuple(value.shape)) if torch.is_tensor(value) else f"a {type(value).__name__}"


def _size(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"


def _more(items: list) -> str:
    return f" and {len(items) - 5:,} more" if len(items) > 5 else ""
