"""The cells that show a view: their display ids and requests, so that later updates reach them."""

from __future__ import annotations

import uuid

import IPython
import IPython.display  # looked up at each call: a test (or a front end) may replace them
import ipywidgets as w


class Cells:
    """Every cell a view was displayed in, and which of them already have the latest update
    (the static summary a view leaves once its run has ended, keyed by what it shows)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.shown: list[tuple[str, dict | None]] = []  # (display id, the cell's request header)
        self._key = None     # what the latest update showed
        self._done = set()   # the display ids that have it

    def show(self, bundle: dict) -> None:
        """Display `bundle` in the running cell, under a display id of its own."""
        pub = getattr(IPython.get_ipython(), "display_pub", None)
        display_id = f"{self.prefix}-{uuid.uuid4().hex[:12]}"
        IPython.display.display(bundle, raw=True, display_id=display_id)
        self.shown.append((display_id, getattr(pub, "parent_header", None)))

    def up_to_date(self, key=None) -> bool:
        """Every cell has the update keyed `key` (None: the latest sent)."""
        if not self.shown:
            return True
        return (key is None or key == self._key) and all(i in self._done for i, _ in self.shown)

    def update(self, make_bundle, key) -> None:
        """Replace the output of every cell that lacks the update keyed `key` with
        `make_bundle()` (called only when some cell needs it); each cell is tried once."""
        if key != self._key:
            self._key, self._done = key, set()
        todo = [(i, parent) for i, parent in self.shown if i not in self._done]
        self._done.update(i for i, _ in todo)  # tried once, even if it fails

        pub = getattr(IPython.get_ipython(), "display_pub", None)
        if pub is None or not todo:  # nothing new, or no kernel to send it through
            return
        bundle = make_bundle()
        for display_id, parent in todo:
            # the update must carry its cell's request: a front end routes it by that
            token = (pub.set_thread_parent(parent)
                     if parent and hasattr(pub, "set_thread_parent") else None)
            try:
                pub.publish(data=bundle, metadata={}, transient={"display_id": display_id}, update=True)
            finally:
                if token is not None:
                    pub.reset_thread_parent(token)


def close_widgets(*roots) -> int:
    """Close every widget reachable from `roots` through their synced traits (children,
    marks, scales, axes, tooltips): the registry and the front end let go of them. Returns
    how many were closed."""
    seen, todo = set(), list(roots)
    while todo:
        item = todo.pop()
        if isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, w.Widget) and id(item) not in seen:
            seen.add(id(item))
            todo.extend(getattr(item, name, None) for name in item.keys)
            item.close()
    return len(seen)
