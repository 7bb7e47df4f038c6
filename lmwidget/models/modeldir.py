"""What a model directory passes before transformers builds from it: no code, weights that fit."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn as nn

from lmwidget.system.jsonfile import shorten, size_text
from .weightfiles import CONFIG_LIMIT, ModelDirError, json_object, reason, saved_shapes

UNBACKED_LIMIT = 64 << 20  # what the model may hold beyond its files' weights (buffers, ...)
# the layers and experts config.json may ask for: at most as many as the saved weights' names
# number ("h.3.", "layers.3.", "experts.3."), or where they number none, these
COUNTS = (("layers", ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
           re.compile(r"(?:^|\.)(?:h|layers?|blocks?)\.(\d+)\.")),
          ("experts", ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
           re.compile(r"(?:^|\.)experts\.(\d+)\.")))
MAX_COUNT = {"layers": 1024, "experts": 4096}
NEVER = "lmwidget never runs code from a model directory"
SAVED = "the config.json and weights save_pretrained writes together"


def read_config(path: Path) -> dict:
    """The config.json of the model directory `path`, read (never run) and checked.

    Args:
        path: a directory holding a config.json.

    Returns:
        The config as a dict.

    Raises:
        ModelDirError: config.json is too large, not a JSON object, points at code (auto_map, an
            attention kernel from the Hub), or names a model_type that is not a causal LM
            transformers ships; or the directory holds a PEFT adapter.
    """
    file = path / "config.json"
    config = json_object(file, CONFIG_LIMIT, "model config")
    if "auto_map" in config:
        code = _code_file(path, config["auto_map"])
        raise ModelDirError(
            f"{file} was refused: its auto_map ({shorten(config['auto_map'], 120)}) points at "
            f"Python code{f' ({code})' if code else ''} that transformers would run to build the model, and "
            f"{NEVER}. Nothing in it ran. Accepted: a model type transformers ships (its "
            f"config.json without auto_map, as save_pretrained writes it for one)")
    for key in ("attn_implementation", "_attn_implementation"):
        value = config.get(key)
        kernels = [v for v in (value.values() if isinstance(value, dict) else [value])
                   if isinstance(v, str) and "/" in v]
        if kernels:
            raise ModelDirError(
                f"{file} was refused: its {key} is {kernels[0]!r}, a kernel from the Hugging Face "
                f"Hub whose code would be downloaded and run, and {NEVER}. Accepted: leave it out, "
                f"or one built into transformers ('sdpa', 'eager')")
    if (path / "adapter_config.json").is_file():
        raise ModelDirError(
            f"{path / 'adapter_config.json'} was refused: it makes transformers load the base "
            f"model it names from elsewhere and this directory's adapter onto it (with peft), "
            f"not the model config.json describes. Accepted: the whole model, as save_pretrained "
            f"writes it (for an adapter: model.merge_and_unload().save_pretrained(...))")
    _check_type(file, config.get("model_type"))
    generation = path / "generation_config.json"
    if generation.is_file():
        json_object(generation, CONFIG_LIMIT, "generation config")
    return config


def _check_type(file: Path, kind) -> None:
    from transformers import __version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not isinstance(kind, str):
        raise ModelDirError(f"{file} was refused: its model_type is {kind!r}, not the name of a "
                            f"model type; save_pretrained writes one (such as 'gpt2' or 'llama')")
    if kind not in CONFIG_MAPPING_NAMES:
        raise ModelDirError(
            f"{file} was refused: its model_type {shorten(kind)} is unknown to transformers "
            f"{__version__}, so only code of the directory's own could build it, and {NEVER}. "
            f"Accepted: a model type transformers ships (such as 'gpt2' or 'llama')")
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelDirError(
            f"{file} was refused: its model_type {kind!r} is not a causal language model "
            f"(AutoModelForCausalLM builds none for it). Accepted: a causal LM type, such as "
            f"'gpt2' or 'llama'")


def skeleton(path: Path) -> nn.Module:
    """The causal LM the config.json of `path` describes, built on the meta device; its weights
    are never read (a checkpoint's are used instead), so its layers and experts are bounded by
    MAX_COUNT alone (check bounds them by the weight files' headers).

    Args:
        path: a model directory.

    Returns:
        The model: its parameters and buffers have names and shapes but no memory.

    Raises:
        ModelDirError: read_config refuses config.json, it asks for more layers or experts than
            MAX_COUNT, or transformers cannot build a causal LM from it.
    """
    return _build(path)[0]


def _build(path: Path, weights: bool = False) -> tuple[nn.Module, dict]:
    """skeleton(path), and the saved shapes (where `weights`: else {}) it was checked against."""
    import transformers

    raw = read_config(path)
    saved = saved_shapes(path, raw) if weights else {}
    _check_counts(path, raw, saved)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True,
                                                         trust_remote_code=False)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as e:
        raise ModelDirError(f"could not build a causal language model from "
                            f"{path / 'config.json'}: {reason(e)}. Accepted: {SAVED}") from None
    return model, saved


def _check_counts(path: Path, raw: dict, saved: dict) -> None:
    """Refuse more layers or experts than the weights' names number (building even an empty model
    takes time and memory in proportion to them), or than MAX_COUNT where they number none."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    files = ", ".join(sorted({file for _, file in saved.values()}))
    for config in [raw, *(v for v in raw.values() if isinstance(v, dict))]:
        kind = config.get("model_type")
        known = isinstance(kind, str) and kind in CONFIG_MAPPING
        aliases = getattr(CONFIG_MAPPING[kind], "attribute_map", {}) if known else {}
        for what, names, pattern in COUNTS:
            held = max([int(m.group(1)) + 1 for key in saved for m in [pattern.search(key)] if m],
                       default=0)
            most = min(held or MAX_COUNT[what], MAX_COUNT[what])
            found = (f"{files} holds weights for {held:,} {what[:-1] if held == 1 else what}"
                     if held else f"the weights' names in {files} number no {what}, and "
                     f"lmwidget builds at most {most:,}" if saved else
                     f"lmwidget builds at most {most:,} {what} without reading weights")
            for name in sorted({*names, *(aliases.get(n) for n in names)} - {None}):
                value = config.get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > most:
                    raise ModelDirError(
                        f"{path / 'config.json'} was refused: its {name} is {value:,}, but "
                        f"{found}; the model was not built. Accepted: {SAVED} (at most as many "
                        f"{what} as its weights hold)")


def check(path: Path) -> None:
    """Refuse a model directory whose weights do not fit its config.json, before any memory is
    allocated for the model: shapes are read from the files' headers and compared with a model
    built on the meta device, and all it holds is bounded by the files' weights.

    Args:
        path: the model directory.

    Raises:
        ModelDirError: a file is too large, damaged or holds code; config.json asks for more
            layers or experts than the files hold; a weight's saved shape differs from the one
            config.json implies; a weight the model needs is missing; or the model would hold
            more than its files' weights and a margin (UNBACKED_LIMIT, or an eighth of them).
    """
    model, saved = _build(path, weights=True)
    own = model.state_dict()
    renamed = _renamer(model, own)
    found, converted = {}, set()  # model key -> (saved key, shape, file); keys made by conversion
    for key, (shape, file) in saved.items():
        target, converter = renamed(key)
        if converter is not None:  # transformers reshapes it (fuses experts, ...): bounded below
            converted.add(target)
        elif target in own:
            found[target] = (key, shape, file)
    everything = _bytes([*model.parameters(), *model.buffers()])
    wrong = [(k, *found[k]) for k in own if k in found and tuple(own[k].shape) != found[k][1]]
    if wrong:
        key, name, shape, file = wrong[0]
        more = f" ({len(wrong)} weights differ; the first)" if len(wrong) > 1 else ""
        raise ModelDirError(
            f"{path / file} was refused: its weights do not fit {path / 'config.json'}{more}: "
            f"{name}: saved {shape}, config.json implies {tuple(own[key].shape)}. The model was "
            f"not built (as config.json describes it, it holds {size_text(everything)}). "
            f"Accepted: {SAVED}")
    ignore = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or ()]
    params = dict(model.named_parameters())  # tied weights once, under their first name
    missing = [k for k in params if k not in found and not any(p.search(k) for p in ignore)]
    files = sorted({file for _, file in saved.values()})
    if missing and not converted:
        raise ModelDirError(
            f"model directory {path} was refused: {', '.join(files)} lacks {missing[0]} "
            f"{tuple(params[missing[0]].shape)}{_more(missing)}, which {path / 'config.json'} "
            f"implies; transformers would fill it with random numbers, so the model would not be "
            f"the pretrained one. Accepted: {SAVED}")
    on_disk = sum((path / file).stat().st_size for file in files)
    backed = min(sum(math.prod(shape) for shape, _ in saved.values()), on_disk) * 4  # as float32
    margin = max(UNBACKED_LIMIT, backed // 8)
    if everything > backed + margin:
        made = _bytes(t for k, t in [*params.items(), *model.named_buffers()] if k not in found)
        raise ModelDirError(
            f"model directory {path} was refused: {path / 'config.json'} implies a model holding "
            f"{size_text(everything)} (of which {size_text(made)} not saved under its own name and "
            f"shape: buffers, converted weights such as experts, weights the files lack), more "
            f"than the {size_text(backed)} of weights in {', '.join(files)} and a margin of "
            f"{size_text(margin)}. The model was not built. Accepted: {SAVED}")


def _renamer(model, own: dict):
    """How transformers maps a saved key to the model's (prefix added or dropped, legacy names,
    conversions); the key as it is where this transformers lays that out otherwise."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (WeightConverter, WeightRenaming,
                                                     rename_source_key)

        mapping = get_model_conversion_mapping(model)
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
    except Exception:  # another layout of transformers: the base model's prefix alone
        def renamed(key):
            if key not in own and f"{prefix}.{key}" in own:
                return f"{prefix}.{key}", None
            return (key.removeprefix(f"{prefix}.") if key.startswith(f"{prefix}.")
                    and key.removeprefix(f"{prefix}.") in own else key), None
        return renamed

    def renamed(key):
        target, converter = rename_source_key(key, renamings, converters, prefix, own)
        if target not in own and key in own:
            target, converter = rename_source_key(key, [], [], prefix, own)
        return target, converter
    return renamed


def _code_file(path: Path, auto_map) -> str:
    """The .py files auto_map's classes lie in, as transformers would import them (the causal
    LM's first)."""
    if isinstance(auto_map, dict):
        auto_map = sorted(auto_map.items(), key=lambda kv: kv[0] != "AutoModelForCausalLM")
        auto_map = [ref for _, ref in auto_map]
    refs = [r for ref in (auto_map if isinstance(auto_map, list) else [auto_map])
            for r in (ref if isinstance(ref, (list, tuple)) else [ref]) if isinstance(r, str)]
    files = []
    for ref in refs:
        code = path / (ref.split("--")[-1].rsplit(".", 1)[0].replace(".", "/") + ".py")
        label = f"{code}{'' if code.is_file() else ', absent here'}"
        if label not in files:
            files.append(label)
    return "; ".join(files[:3])


def _bytes(tensors) -> int:
    return sum(t.numel() * (4 if t.is_floating_point() else t.element_size())
               for t in {id(t): t for t in tensors}.values())


def _more(items: list) -> str:
    return f" and {len(items) - 1:,} more" if len(items) > 1 else ""
