"""The texts lmwidget trains on: the corpora that ship or download once, files, and text given."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

CHUNK = 1 << 16  # characters encoded at once: the working memory of an encoding, whatever the text

CORPORA = ("builtin", "shakespeare")

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)

SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

SHAKESPEARE_BYTES = 1_115_394

URL_ENV = "LMWIDGET_SHAKESPEARE_URL"  # tests point this at a local server

CACHE_ENV = "LMWIDGET_CACHE_DIR"


def builtin_text() -> str:
    """English prose that ships with every CPython: the reference-manual topics."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a trimmed Python: fall back to the builtins' docstrings
        import builtins

        docs = (getattr(obj, "__doc__", None) for obj in vars(builtins).values())
        return "\n\n".join(d for d in docs if isinstance(d, str))
    return "\n\n".join(topics[k] for k in sorted(topics))


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmwidget"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shakespeare_text(timeout: float = 30.0) -> str:
    """Tiny Shakespeare, downloaded once into the cache, checksum-verified."""
    path = cache_dir() / "tinyshakespeare.txt"
    if path.is_file():
        data = path.read_bytes()
        if _sha256(data) == SHAKESPEARE_SHA256:
            return data.decode("utf-8")
    url = os.environ.get(URL_ENV) or SHAKESPEARE_URL
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read(SHAKESPEARE_BYTES + 1)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(
            f"could not download tiny Shakespeare from {url} ({reason}). Offline, use "
            f"data='builtin' (ships with Python), or download the file elsewhere and pass "
            f"its path: data='path/to/tinyshakespeare.txt'"
        ) from e
    digest = _sha256(data)
    if digest != SHAKESPEARE_SHA256:
        raise ValueError(
            f"tiny Shakespeare from {url} has sha256 {digest} ({len(data)} bytes); expected "
            f"{SHAKESPEARE_SHA256} ({SHAKESPEARE_BYTES} bytes). Nothing was cached."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tinyshakespeare-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return data.decode("utf-8")


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None


def load_text(data) -> str:
    """The text of `data`: a corpus name, a path to a UTF-8 file, or the text itself.

    A string without whitespace that is neither a corpus name nor an existing file is
    refused: it is a misspelt name or a wrong path, not text worth training on.
    """
    if isinstance(data, os.PathLike):
        text = _read_file(Path(data))
    elif not isinstance(data, str):
        raise TypeError(
            f"data must be a corpus name {CORPORA}, a path to a UTF-8 text file, or a str "
            f"of text; got {type(data).__name__}"
        )
    elif data.strip() == "builtin":
        text = builtin_text()
    elif data.strip() == "shakespeare":
        text = shakespeare_text()
    elif "\n" not in data and os.path.exists(os.path.expanduser(data.strip())):
        text = _read_file(Path(os.path.expanduser(data.strip())))
    elif data and not any(c.isspace() for c in data):
        raise ValueError(
            f"data={data!r} is neither a corpus name nor an existing file. Valid corpus "
            f"names: {', '.join(CORPORA)}; or pass a path to an existing UTF-8 text file, or "
            f"a string of text to train on (text containing spaces or newlines)"
        )
    else:
        text = data
    if not text:
        raise ValueError(f"the corpus {_describe(data)} is empty: there is nothing to train on")
    return text


def _describe(data) -> str:
    if isinstance(data, str) and len(data) > 40:
        return f"(a str of {len(data)} characters)"
    return repr(str(data))


def utf8_len(text: str, start: int = 0, end: int | None = None) -> int:
    """len(text[start:end].encode("utf-8")), without holding a copy or the whole encoding."""
    end = len(text) if end is None else end
    if text.isascii():
        return end - start
    return sum(len(text[i:min(end, i + CHUNK)].encode("utf-8", "surrogatepass")) for i in range(start, end, CHUNK))
