"""torch.save files read safely: a whole zip archive of stored records, tensors and plain values only, each tensor on its own bytes."""

from __future__ import annotations

import pickletools
import re
import zipfile
from pathlib import Path

import torch

from lmwidget.errors import CheckpointError

ZIP = b"PK\x03\x04"  # how a zip archive starts: torch.save writes one (lmwidget writes no other)
END = b"PK\x05\x06"  # a zip archive's closing record, within its last 65,557 bytes
END_SPAN = 65_557
OPCODES = {ord(op.code): op.name for op in pickletools.opcodes}


def check_archive(path: Path, kind: str = "checkpoint") -> list:
    """Refuse a file that is not a whole zip archive of stored records, as torch.save writes,
    reading its directory alone; `kind` names the file in the refusal.

    Returns:
        The archive's records (zipfile.ZipInfo).

    Raises:
        CheckpointError: the file is truncated, not a zip archive, damaged, compressed, or
            its records overlap."""
    size = path.stat().st_size
    with open(path, "rb") as f:  # its first bytes and its last 64 KiB: never the whole file
        head = f.read(len(ZIP))
        f.seek(max(0, size - END_SPAN))
        tail = f.read() if head == ZIP else b""
    at = tail.rfind(END)  # the closing record: 22 bytes and a comment of the length it gives
    ends = at >= 0 and len(tail) - at >= 22 + int.from_bytes(tail[at + 20:at + 22], "little")
    if len(head) < len(ZIP) and ZIP.startswith(head) or head == ZIP and not ends:
        raise CheckpointError(
            f"{kind} {path} is truncated: its {size:,} bytes end before the end of the zip "
            f"archive a whole checkpoint is (a copy or a save that was cut short, or a file still "
            f"being written). Nothing was loaded")
    if head != ZIP:
        raise CheckpointError(
            f"{path} is not an lmwidget checkpoint: those are zip archives, as torch.save writes, "
            f"and its {size:,} bytes start with {head.hex(' ')}. Nothing in it was read")
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
        raise CheckpointError(f"{kind} {path} is damaged ({size:,} bytes): the directory of its "
                              f"zip archive cannot be read ({words(e)}). Nothing was loaded") from None
    packed = [r.filename for r in records if r.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise CheckpointError(
            f"{kind} {path} was refused: its record {packed[0]} is compressed, which torch.save "
            f"never does, and it could unpack to any size. Nothing was loaded")
    total = sum(r.file_size for r in records)
    if total > size:
        raise CheckpointError(
            f"{kind} {path} was refused: its records add up to {total:,} bytes, more than the "
            f"file's {size:,}, so they overlap, which torch.save never writes. Nothing was loaded")
    return records


def check_tensors(obj, path: Path, where: str = "checkpoint", kind: str = "checkpoint") -> None:
    """A tensor must be dense and no larger than the bytes it lies on: a stride of 0 lets a few
    bytes of the file pose as a tensor of any size, which copying (the digest) would allocate."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            check_tensors(value, path, f"{where}[{key!r}]", kind)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_tensors(value, path, f"{where}[{i}]", kind)
    elif torch.is_tensor(obj):
        if obj.layout != torch.strided:
            raise CheckpointError(f"{kind} {path} was refused: {where} is a {obj.layout} tensor; "
                                  f"lmwidget saves dense (strided) tensors only. Nothing was loaded")
        held = obj.untyped_storage().nbytes()
        if obj.numel() * obj.element_size() > held:
            raise CheckpointError(
                f"{kind} {path} was refused: {where} has shape {tuple(obj.shape)} "
                f"({obj.numel() * obj.element_size():,} bytes) but lies on {held:,} bytes of the file "
                f"(strides {obj.stride()}: its elements overlap), which torch.save never writes. "
                f"Nothing was loaded")


def refused(text: str) -> str:
    """What torch's weights-only unpickler refused, from its message, without its advice."""
    found = re.search(r"GLOBAL (\S+?)(?:\s|$)", text)
    if found:  # torch names a builtin without its module
        name = found.group(1) if "." in found.group(1) else f"builtins.{found.group(1)}"
        return f"a reference to {name}, a function or class that unpickling would import and call"
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        code = int(found.group(1))
        return (f"the pickle instruction {OPCODES.get(code, 'unknown')} (opcode {code}), which tensors "
                f"and plain values never need")
    for line in text.splitlines():
        line = line.split("WeightsUnpickler error:")[-1].strip()
        line = line.removeprefix("Weights only load failed.").strip()
        if line and not re.search(r"weights_only|safe_globals|documentation|trusted source", line):
            return f"what only an unsafe unpickler would build ({words(line)})"
    return "what only an unsafe unpickler would build"


def damaged(path: Path, error: BaseException, kind: str = "checkpoint") -> CheckpointError:
    """The refusal of a file torch cannot read: its size and the first sentence of why."""
    return CheckpointError(f"{kind} {path} is damaged ({path.stat().st_size:,} bytes) and cannot "
                           f"be read: {words(error)}. Nothing was loaded")


def words(error, limit: int = 200) -> str:
    """The first sentence of a message, in whole words: what went wrong, not torch's advice."""
    text = " ".join(str(error).split()) or type(error).__name__
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return sentence
