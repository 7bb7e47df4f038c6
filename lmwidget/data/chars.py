"""The character tokenizer: each distinct character of a text an id."""

from __future__ import annotations

import numpy as np

from .text import CHUNK
from .tokencheck import dtype_for


class CharTokenizer:
    """Maps each distinct character of a text to an integer id, and back."""

    kind = "char"

    def __init__(self, chars):
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)  # sorted, as chars

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The tokenizer of the distinct characters of `text`.

        Args:
            text: the text whose characters make the vocabulary.

        Returns:
            A CharTokenizer whose ids follow the characters' sorted order.
        """
        return cls(text)

    @property
    def vocab_size(self) -> int:
        """The number of distinct characters: ids run from 0 to vocab_size - 1."""
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """The ids of the characters of `text`.

        Args:
            text: the text to encode.

        Returns:
            One id per character.

        Raises:
            ValueError: a character that is not in the vocabulary (it is named).
        """
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(
                f"character {e.args[0]!r} is not in the vocabulary of {self.vocab_size} "
                f"characters this model was trained on"
            ) from None

    def encode_array(self, text: str) -> np.ndarray:
        """encode() as a compact array (uint16, or uint32 past 65,536 characters), a piece at a
        time: its working memory does not grow with the text."""
        out = np.empty(len(text), dtype_for(self.vocab_size))
        cps = self.codepoints
        for start in range(0, len(text), CHUNK):
            piece = text[start:start + CHUNK]
            cp = np.frombuffer(piece.encode("utf-32-le", "surrogatepass"), dtype="<u4")
            ids = np.searchsorted(cps, cp)
            bad = (ids >= len(cps)) | (cps[np.minimum(ids, len(cps) - 1)] != cp)
            if bad.any():
                self.encode(piece[int(np.argmax(bad))])  # raises, naming the character
            out[start:start + len(piece)] = ids
        return out

    def decode(self, ids) -> str:
        """The text of `ids`; an id outside the vocabulary (a model with more outputs than
        the data has characters) reads as U+FFFD."""
        n = len(self.chars)
        return "".join(self.chars[i] if 0 <= i < n else "\ufffd" for i in map(int, ids))

    @property
    def start_id(self) -> int:
        """The token a sample starts from: a newline where the text has one."""
        return self.stoi.get("\n", 0)

    def describe(self) -> str:
        """A short label for headers: "characters (<vocab_size>)"."""
        return f"characters ({self.vocab_size})"

    def same_as(self, other) -> bool:
        """Whether `other` gives every character the same id as this tokenizer.

        Args:
            other: another tokenizer.

        Returns:
            True when `other` is a CharTokenizer of the same characters.
        """
        return isinstance(other, CharTokenizer) and other.chars == self.chars
