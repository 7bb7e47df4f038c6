"""prepare(): a corpus larger than memory (text files, a directory of them, a Hugging Face
dataset) read in pieces and tokenized once into a token directory that training memory-maps."""

from __future__ import annotations

import argparse
import codecs
import os
from pathlib import Path

from tqdm.auto import tqdm

from . import tokens
from .chars import CharTokenizer
from .text import load_text, utf8_len
from .tokenfiles import TokenWriter, read_meta
from .tokens import TOKENIZERS, cut, pieces

BLOCK = 1 << 20       # bytes read from a file at once
ROWS = 1000           # dataset rows read at once
ENCODE_PIECE = 1 << 16  # characters per piece given to the tokenizer (whole lines)


class Corpus:
    """A corpus as UTF-8 text pieces, training split then validation split, each piece whole
    lines where it can be: files read a block at a time, rows of a dataset, or a text in memory."""

    def __init__(self, data, val_fraction: float = 0.1, text_column: str = "text"):
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1 (exclusive); got {val_fraction}")
        self.val_fraction, self.text_column = val_fraction, text_column
        self.files, self.dataset, self.text = [], None, None
        self.inputs = []  # the file or directory read: prepare never writes inside it
        if hasattr(data, "column_names"):  # a datasets.Dataset
            if not hasattr(data, "num_rows"):
                raise TypeError(f"a streaming dataset ({type(data).__name__}) has no known length to cut "
                                f"a validation split from; pass a datasets.Dataset (not streaming) or files")
            if text_column not in data.column_names:
                raise ValueError(f"text_column={text_column!r} is not a column of this dataset; its "
                                 f"columns: {', '.join(map(repr, data.column_names))}")
            self.dataset, self.describe = data, f"a dataset of {data.num_rows:,} rows ({text_column!r})"
            self.total = None
        elif isinstance(data, (str, os.PathLike)) and "\n" not in str(data) and Path(data).expanduser().is_dir():
            root = Path(data).expanduser()
            if (root / "meta.json").is_file():
                raise ValueError(f"{root} is a token directory already: train on it with data={str(data)!r}")
            self.files = sorted(p for p in root.rglob("*") if p.is_file()
                                and not any(part.startswith(".") for part in p.relative_to(root).parts))
            if not self.files:
                raise ValueError(f"directory {root} has no files to prepare (hidden files are skipped)")
            self.describe, self.inputs = f"{root} ({len(self.files)} files)", [root]
        elif isinstance(data, (str, os.PathLike)) and "\n" not in str(data) and Path(data).expanduser().is_file():
            self.files, self.describe = [Path(data).expanduser()], str(Path(data).expanduser())
            self.inputs = list(self.files)
        else:  # a corpus name or a text: in memory already (data.load_text explains a bad name)
            self.text = load_text(data)
            self.describe = data if isinstance(data, str) and len(data) < 40 else f"a text of {len(self.text):,} characters"
        if self.files:
            self.total = sum(f.stat().st_size for f in self.files)
            if not self.total:
                raise ValueError(f"{self.describe} is empty: there is nothing to prepare")
        elif self.text is not None:
            self.total = utf8_len(self.text)

    def pieces(self, splits=("train", "val"), progress=None):
        """(split, text) pieces in corpus order, of the `splits` asked for; `progress(n)` is
        told the bytes consumed."""
        if self.files:
            yield from self._file_pieces(splits, progress)
        elif self.dataset is not None:
            n = self.dataset.num_rows
            cut = n - max(1, int(n * self.val_fraction))
            for split, lo, hi in (("train", 0, cut), ("val", cut, n)):
                for start in range(lo, hi, ROWS) if split in splits else ():
                    rows = self.dataset[start:min(hi, start + ROWS)][self.text_column]
                    text = "\n".join(r for r in rows if r) + "\n"
                    if progress:
                        progress(len(text.encode("utf-8", "surrogatepass")))
                    yield split, text
        else:
            cut = len(self.text) - max(1, int(len(self.text) * self.val_fraction))
            for split, part in (("train", self.text[:cut]), ("val", self.text[cut:])):
                for piece in pieces(part, BLOCK, spaces=True) if split in splits else ():
                    if progress:
                        progress(len(piece.encode("utf-8", "surrogatepass")))
                    yield split, piece

    def _file_pieces(self, splits, progress):
        """Files in order, as one stream of bytes cut at `total * (1 - val_fraction)`."""
        cut = self.total - max(1, int(self.total * self.val_fraction))
        pos, carry = 0, {"train": "", "val": ""}
        for path in self.files:
            decoder = codecs.getincrementaldecoder("utf-8")()
            with open(path, "rb") as f:
                while True:
                    try:
                        block = f.read(BLOCK)
                    except OSError as e:
                        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
                    parts = ([("train", block[:cut - pos]), ("val", block[cut - pos:])]
                             if pos < cut < pos + len(block) else [("train" if pos < cut else "val", block)])
                    for split, raw in parts:
                        try:
                            text = decoder.decode(raw, final=not block)
                        except UnicodeDecodeError as e:
                            raise ValueError(f"{path} is not UTF-8 text ({e.reason} near byte "
                                             f"{pos + e.start:,} of the corpus)") from None
                        if progress and split in splits:
                            progress(len(raw))
                        text, carry[split] = _whole_lines(carry[split] + text)
                        if split == "val" and carry["train"]:  # the cut: the train split ends here
                            if "train" in splits:
                                yield "train", carry["train"]
                            carry["train"] = ""
                        if text and split in splits:
                            yield split, text
                    pos += len(block)
                    if not block:
                        break
        for split in ("train", "val"):
            if carry[split] and split in splits:
                yield split, carry[split]


def _whole_lines(text: str) -> tuple[str, str]:
    """`text` up to its last newline, and the rest (carried to the next piece). A text of no
    newline longer than a block is cut before its last space, else anywhere: what is carried
    stays under a block whatever the lines (text8 is one line of 100 MB)."""
    end = text.rfind("\n") + 1
    if not end and len(text) > BLOCK:
        end = cut(text, 0, len(text))
    return (text[:end], text[end:]) if end else ("", text)


def prepare(data, out_dir, tokenizer="bpe", vocab_size: int = 0, val_fraction: float = 0.1,
            text_column: str = "text", progress: bool = True) -> Path:
    """Tokenize `data` into the token directory `out_dir`, whole or not at all.

    `out_dir` gets train.bin and val.bin (uint16 tokens, or uint32 past 65,536) and meta.json
    (the tokenizer as JSON, counts, largest ids, checksums). Streams: memory does not grow with
    the corpus, whatever its lines. The validation split is the tail (`val_fraction` of the
    bytes, or of the rows), cut before any tokenizer is trained. The files are written into a
    new directory beside `out_dir`, which replaces it only once whole: an interruption leaves
    the previous token directory as it was. Train on it with `lmwidget.train(data=out_dir)`.

    Args:
        data: a text file, a directory of text files, a Hugging Face `datasets.Dataset`, a
            corpus name or a text.
        out_dir: a new directory, an empty one, or a token directory prepare wrote (replaced).
        tokenizer: "char", "word", "bpe", or a tokenizer of the field (see tokens.load).
        vocab_size: for "word" and "bpe" (0: their default).
        val_fraction: the tail kept for validation.
        text_column: a dataset's column of text.
        progress: show progress bars.

    Returns:
        The token directory's path.

    Raises:
        ValueError: bad options or input; an `out_dir` holding files prepare did not write, or
            inside the input directory (or holding the input): nothing is written then.
    """
    tokens.check(tokenizer, vocab_size)
    corpus = Corpus(data, val_fraction, text_column)
    writer = TokenWriter(out_dir, inputs=corpus.inputs)  # checked, and its new directory made, before any training
    try:
        tok = _tokenizer(corpus, tokenizer, vocab_size, progress)
        writer.begin(tok.vocab_size)
        with _bar(corpus.total, "tokenizing", progress) as bar:
            for split, text in corpus.pieces(progress=bar.update):
                for piece, ids in zip(tokens.pieces(text, ENCODE_PIECE, spaces=True), _encode(tok, text)):
                    writer.write(split, ids, utf8_len(piece))
    except BaseException:
        writer.abort()
        raise
    writer.close(tokens.saved(tok), source=str(corpus.describe), val_fraction=val_fraction)
    return writer.dir


def _encode(tok, text):
    """Token arrays of `text`'s pieces (tokens.pieces), one per piece."""
    parts = tokens.pieces(text, ENCODE_PIECE, spaces=True)
    if hasattr(tok, "encode_pieces"):
        return tok.encode_pieces(parts)
    return (tokens.encode_array(tok, p) for p in parts)


def _tokenizer(corpus: Corpus, spec, vocab_size: int, progress: bool):
    """The tokenizer: characters seen anywhere, or words / BPE trained on the training split
    (streamed), or the one given."""
    if isinstance(spec, CharTokenizer) or spec not in ("char", "word", "bpe"):
        return tokens.load(spec) if not isinstance(spec, CharTokenizer) else spec
    if spec == "char":
        chars = set()
        with _bar(corpus.total, "reading characters", progress) as bar:
            for _, text in corpus.pieces(progress=bar.update):
                chars.update(text)
        return CharTokenizer(chars)
    size = vocab_size or tokens.DEFAULT_VOCAB[spec]
    with _bar(None, f"training the {spec} tokenizer", progress, unit="B") as bar:
        texts = (t for _, t in corpus.pieces(("train",), progress=bar.update))
        return tokens.train_word(texts, size) if spec == "word" else tokens.train_bpe(texts, size)


def _bar(total, desc: str, progress: bool, unit: str = "B"):
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not progress,
                dynamic_ncols=True, mininterval=0.5)


def main(argv=None) -> None:
    """`python -m lmwidget prepare DATA OUT_DIR [--tokenizer bpe] [--vocab-size N] ...`."""
    p = argparse.ArgumentParser(prog="python -m lmwidget prepare",
                                description="Tokenize a corpus once into a token directory for "
                                            "lmwidget.train(data=OUT_DIR).")
    p.add_argument("data", help="a text file, a directory of text files, or a corpus name")
    p.add_argument("out_dir", help="the token directory to write")
    p.add_argument("--tokenizer", default="bpe",
                   help=f"{', '.join(TOKENIZERS)}, or a tokenizer.json file or directory (default: bpe)")
    p.add_argument("--vocab-size", type=int, default=0, help="for word and bpe (0: their default)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="the tail kept for validation (default: 0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        out = prepare(args.data, args.out_dir, args.tokenizer, args.vocab_size, args.val_fraction,
                      progress=not args.quiet)
    except (ValueError, TypeError, ImportError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    meta = read_meta(out)
    counts = ", ".join(f"{s} {v['tokens']:,} tokens ({v['bytes']:,} bytes)" for s, v in meta["splits"].items())
    print(f"wrote {out}: {counts}; {meta['dtype']}, vocab_size {meta['vocab_size']:,}")
