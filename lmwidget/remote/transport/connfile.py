"""A job's connection file: written owner-only and atomically, read back within a bound and checked."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from .encryption import KEYS
from lmwidget.system.jsonfile import read, shorten

SCHEME = "hmac-sha256-purpose"


def write_connection_file(path, info: dict) -> Path:
    """Write `info` (ports, keys) as JSON readable by its owner only (0600, as Jupyter's kernel
    connection files), atomically: a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


CONNECTION_LIMIT = 64 << 10  # bytes: a connection file has a few hundred; a larger one is not read
CONNECTION_ACCEPTED = ("the JSON object a job writes: \"ip\" (text), \"metrics_port\" and \"control_port\" "
                       "(1 to 65535), \"key\" (text) and \"signature_scheme\"")


def read_connection_file(path) -> dict:
    """A job's connection file, read with a bound and its schema checked.

    Args:
        path: the file (a job's connection.json).

    Returns:
        Its object: ip, ports, key and signature scheme, and the optional curve keys,
        run_dir, pid and ended, each of the type it needs.

    Raises:
        ValueError: the file is missing, over CONNECTION_LIMIT (unread), not JSON, nested too
            deep, not an object, or a field is missing or of the wrong type; naming the file,
            the value found and what is accepted.
    """
    path = Path(path)
    info = read(path, CONNECTION_LIMIT, "connection file", CONNECTION_ACCEPTED)
    if not isinstance(info, dict):
        raise ValueError(f"connection file {path} holds {shorten(info, 60)}; expected {CONNECTION_ACCEPTED}")
    missing = [k for k in ("ip", "metrics_port", "control_port", "key", "signature_scheme") if k not in info]
    if missing:
        raise ValueError(f"connection file {path} lacks {', '.join(missing)}; expected {CONNECTION_ACCEPTED}")
    port = lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536  # noqa: E731
    for key, ok, accepted in (("ip", lambda v: isinstance(v, str) and v, "a host name or address"),
                              ("metrics_port", port, "an integer from 1 to 65535"),
                              ("control_port", port, "an integer from 1 to 65535"),
                              ("key", lambda v: isinstance(v, str) and v, "the job's key, as text"),
                              ("signature_scheme", lambda v: isinstance(v, str), f"{SCHEME!r}"),
                              ("run_dir", lambda v: isinstance(v, str), "a directory, as text"),
                              ("pid", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
                              ("ended", lambda v: isinstance(v, bool), "true or false")):
        if key in info and not ok(info[key]):
            raise ValueError(f"connection file {path} has {key} = {shorten(info[key], 60)}; expected {accepted}")
    if info["signature_scheme"] != SCHEME and not info.get("ended"):  # an ended job's record is read, not spoken to
        raise ValueError(f"connection file {path} asks for signature scheme "
                         f"{shorten(info['signature_scheme'], 40)}; supported: {SCHEME!r}")
    curve = info.get("curve")
    if curve is not None and not (isinstance(curve, dict) and all(
            isinstance(curve.get(k), str) and len(curve[k]) == 40 for k in KEYS)):
        raise ValueError(f"connection file {path} has a malformed curve entry {shorten(curve, 80)}: "
                         f"expected {', '.join(KEYS)}, 40 characters of Z85 each")
    return info
