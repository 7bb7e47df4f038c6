"""Where the kernel reads a view's clicks: a subshell of lmwidget's own, so the controls act while a cell is busy."""

from __future__ import annotations

import threading
import time

from IPython import get_ipython
from ipykernel.connect import get_connection_file
from jupyter_client import BlockingKernelClient

CREATE_TIMEOUT = 5.0  # s: the kernel answers a create_subshell_request at once, even while a cell runs

_lock = threading.Lock()
_subshell: str | None = None   # the subshell of this kernel that serves lmwidget's controls
_refused: str | None = None    # why there is none, once known


def _kernel():
    shell = get_ipython()
    return getattr(shell, "kernel", None)


def _create_subshell() -> str:
    """Ask this kernel for a subshell the way any client does: a create_subshell_request on its
    own control channel (Jupyter's messaging protocol 5.5, kernel subshells)."""
    client = BlockingKernelClient(connection_file=get_connection_file())
    client.load_connection_file()
    client.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
    try:
        request = client.session.msg("create_subshell_request", {})
        client.control_channel.send(request)
        deadline = time.monotonic() + CREATE_TIMEOUT
        while True:
            reply = client.control_channel.get_msg(timeout=max(0.0, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == request["header"]["msg_id"]:
                break
    finally:
        client.stop_channels()
    content = reply["content"]
    if content.get("status", "ok") != "ok" or "subshell_id" not in content:
        raise RuntimeError(f"the kernel refused a subshell: {content}")
    return content["subshell_id"]


def subshell() -> str | None:
    """The kernel subshell that serves lmwidget's controls, created on first use.

    Returns:
        Its id, or None where there can be none: outside an IPython kernel, in a kernel
        without subshells (ipykernel < 7, Colab's), or in one whose comms cannot be routed
        (see `why_not`).
    """
    global _subshell, _refused
    with _lock:
        if _subshell is not None or _refused is not None:
            return _subshell
        kernel = _kernel()
        if kernel is None:
            _refused = "not in a Jupyter kernel"
        elif getattr(kernel, "shell_channel_thread", None) is None:
            _refused = "this kernel has no subshells (ipykernel 7 or later has)"
        elif not hasattr(getattr(kernel, "comm_manager", None), "get_comm"):
            _refused = "this kernel has no comm manager"
        else:
            try:
                _subshell = _create_subshell()
            except Exception as e:  # never fail a display: the clicks then wait for the cell
                _refused = f"this kernel gave no subshell ({e!r})"
        return _subshell


def why_not() -> str | None:
    """Why lmwidget's controls are not served on a subshell of their own, once asked.

    Returns:
        The reason in a few words, or None when they are (or it was not asked yet).
    """
    return _refused


def serve_on_subshell(*widgets) -> bool:
    """Have the kernel hand the messages a front end sends these widgets (clicks, a slider's
    value) to lmwidget's subshell, whichever channel the front end chose: a cell that blocks
    the kernel's main thread (`run.wait()`, a long computation) then delays no click.

    ipykernel 7.4 sends each comm message to the subshell that last sent on that comm, which
    for a widget made in a cell is the main shell, even when JupyterLab sends it over a
    subshell of its own: a comm's `_reply_subshell_for` names where it goes. Each widget
    here answers with lmwidget's subshell instead. Its callbacks then run on that subshell's
    thread; the views' callbacks only ask the source and wake the updater.

    Args:
        widgets: ipywidgets widgets with an open comm.

    Returns:
        True when every widget is routed; False where the kernel cannot (see `why_not`): its
        clicks then reach the kernel the way the front end sends them.
    """
    subshell_id = subshell()
    if subshell_id is None:
        return False
    comms = [getattr(widget, "comm", None) for widget in widgets]
    if not all(hasattr(comm, "_reply_subshell_for") for comm in comms):
        global _refused
        _refused = "this kernel chooses no subshell for a comm's messages (ipykernel 7.4 does)"
        return False
    for comm in comms:
        comm._reply_subshell_for = lambda _data, _default: subshell_id
    return True
