"""A model directory's files read within bounds: JSON, and its weights' shapes, never their data."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from lmwidget.errors import CheckpointError, ModelDirError
from lmwidget.system import jsonfile
from lmwidget.system import torchfile

CONFIG_LIMIT = 1 << 20  # config.json, generation_config.json: a few KiB as save_pretrained writes
INDEX_LIMIT = 8 << 20  # *.index.json: a few hundred KiB for the largest models
HEADER_LIMIT = 8 << 20  # a safetensors header (the JSON of its tensors' names, shapes, offsets)
PICKLE_LIMIT = 8 << 20  # the pickle inside a pytorch_model.bin: its tensors' data lies beside it
# what from_pretrained loads, in the order it looks for them (transformers.utils' SAFE_WEIGHTS_NAME,
# SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME): spelt out, as transformers is optional
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
           "pytorch_model.bin.index.json")
ADVICE = re.compile(r"trust_remote_code|weights_only|ignore_mismatched_sizes|above report|"
                    r"safe_globals", re.IGNORECASE)
# what a library's message means when it only advises turning a safety off
MEANING = (("ignore_mismatched_sizes", "a saved weight's shape differs from the one config.json "
                                       "implies"),
           ("trust_remote_code", "it needs Python code of the directory's own"),
           ("weights_only", "a weights file holds objects other than tensors"))


def json_object(file: Path, limit: int, what: str) -> dict:
    """The JSON object in `file`, read with jsonfile.read (bounded, never a named pipe).

    Args:
        file: the file.
        limit: the most bytes read; a larger file is refused unread.
        what: what the file is ("config.json", "an index of weight shards").

    Returns:
        The object, as a dict.

    Raises:
        ModelDirError: the file is unreadable, larger than `limit`, not JSON, or not an object.
    """
    accepted = f"{what} as save_pretrained writes it"
    try:
        value = jsonfile.read(file, limit, what, accepted)
    except ValueError as e:
        raise ModelDirError(str(e)) from None
    if not isinstance(value, dict):
        raise ModelDirError(f"{what} {file} holds a JSON {type(value).__name__}, not an object; "
                            f"expected {accepted}")
    return value


def weights_file(path: Path, config: dict) -> str | None:
    """The weights file transformers would load from the directory `path`.

    Args:
        path: the model directory.
        config: its config.json (a file it names in transformers_weights comes first).

    Returns:
        The file's name, or None where there is none.
    """
    explicit = config.get("transformers_weights")
    for name in [explicit] if isinstance(explicit, str) else WEIGHTS:
        if Path(name).name == name and (path / name).is_file():
            return name
    return None


def saved_shapes(path: Path, config: dict) -> dict:
    """Each saved weight's shape and file, read from the weights file transformers would load
    (safetensors headers, a torch.save archive memory-mapped), never its data.

    Args:
        path: the model directory.
        config: its config.json, as read_config returned it.

    Returns:
        {key: (shape tuple, file name)}.

    Raises:
        ModelDirError: no weights, or a file that is too large, damaged or not tensors alone.
    """
    name = weights_file(path, config)
    if name is None:
        raise ModelDirError(f"model directory {path} has no weights: expected {', '.join(WEIGHTS)}")
    file = path / name
    if not name.endswith(".index.json"):
        return _read_shapes(path, name)
    shards = json_object(file, INDEX_LIMIT, "index of weight shards").get("weight_map")
    if not isinstance(shards, dict) or not all(isinstance(s, str) for s in shards.values()):
        raise ModelDirError(f"{file} was refused: it has no weight_map of weight names to shard "
                            f"files (found {jsonfile.shorten(shards)}). Accepted: the index "
                            f"save_pretrained writes")
    saved = {}
    for shard in sorted(set(shards.values())):
        if Path(shard).name != shard or not (path / shard).is_file():
            raise ModelDirError(
                f"{file} was refused: its shard {jsonfile.shorten(shard)} is not a file in "
                f"{path}. Accepted: shards beside the index, named as save_pretrained names them")
        saved.update(_read_shapes(path, shard))
    return saved


def _read_shapes(path: Path, name: str) -> dict:
    file = path / name
    shapes = (_safetensors(file) if name.endswith(".safetensors") else _torch_archive(file))
    return {key: (shape, name) for key, shape in shapes.items()}


def _safetensors(file: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    size = file.stat().st_size
    with open(file, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
    if size < 8 or length > HEADER_LIMIT or 8 + length > size:
        what = (f"has only {size:,} bytes" if size < 8 else
                f"says its header is {length:,} bytes long, more than the {HEADER_LIMIT:,} "
                f"lmwidget reads" if length > HEADER_LIMIT else
                f"says its header is {length:,} bytes long, but the file has only {size:,}")
        raise ModelDirError(f"{file} was refused: it {what}. Nothing more was read. Accepted: a "
                            f"safetensors file as save_pretrained writes it")
    try:
        with safe_open(str(file), "pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except SafetensorError as e:
        raise ModelDirError(f"{file} was refused: it is not a whole safetensors file "
                            f"({reason(e)}). Its tensors were not read. Accepted: a safetensors "
                            f"file as save_pretrained writes it") from None


def _torch_archive(file: Path) -> dict:
    """The shapes in a pytorch_model.bin, checked as lmwidget's checkpoints are (torchfile: a whole
    archive of stored records that do not overlap, dense tensors on their own bytes)."""
    kind, accepted = "weights file", "Accepted: model.safetensors (save_pretrained writes one)"
    with open(file, "rb") as f:
        head = f.read(len(torchfile.ZIP))
    if head != torchfile.ZIP:
        raise ModelDirError(
            f"{file} was refused: it is not the zip archive torch.save writes (its first bytes "
            f"are {head.hex(' ') or 'none'}), so reading it would mean unpickling all of it. "
            f"{accepted}, or a pytorch_model.bin saved by torch 1.6 or later")
    try:
        records = torchfile.check_archive(file, kind)
        pickles = [r for r in records if r.filename.endswith("data.pkl")]
        if len(pickles) != 1 or pickles[0].file_size > PICKLE_LIMIT:
            what = (f"its pickle is {pickles[0].file_size:,} bytes, more than the "
                    f"{PICKLE_LIMIT:,} lmwidget reads" if len(pickles) == 1 else
                    f"it holds {len(pickles)} pickles (data.pkl), where torch.save writes one")
            raise ModelDirError(f"{file} was refused: {what}. Nothing was loaded. {accepted}")
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as e:
            raise ModelDirError(
                f"{file} was refused: it holds objects other than tensors "
                f"({torchfile.refused(str(e))}), and lmwidget never unpickles those: nothing in it "
                f"ran and nothing was loaded. Accepted: tensors alone, as save_pretrained writes "
                f"them (best as model.safetensors)") from None
        except Exception as e:
            raise torchfile.damaged(file, e, kind) from None
        if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                                  for k, v in state.items()):
            raise ModelDirError(f"{file} was refused: it holds a {type(state).__name__}, not a "
                                f"dict of names to tensors as save_pretrained writes. {accepted}")
        torchfile.check_tensors(state, file, file.name, kind)
    except CheckpointError as e:
        raise ModelDirError(f"{e}. {accepted}") from None
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


def reason(error: BaseException, limit: int = 300) -> str:
    """What a library's message says went wrong, without its advice.

    Args:
        error: the exception transformers, safetensors or torch raised.
        limit: the most characters kept.

    Returns:
        Its class and the sentences of its message that advise nothing; where a sentence advises
        turning a safety off (trust_remote_code, weights_only, ignore_mismatched_sizes) or points
        at a report elsewhere, what that advice means in words, or only the class.
    """
    name, text = type(error).__name__, str(error)
    sentences = [s.strip().rstrip(".") for line in text.splitlines()
                 for s in re.split(r"(?<=[.!?])\s+", line) if s.strip()]
    kept = [s for s in sentences if not ADVICE.search(s)]
    kept += [meaning for word, meaning in MEANING if word in text and meaning not in kept]
    said = "; ".join(kept)
    if len(said) > limit:
        said = said[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{name}: {said}" if said else name
