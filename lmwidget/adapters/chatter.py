"""Framework chatter kept out of notebook cells while lmwidget runs a framework: known-harmless lines silenced, other framework log lines sent to the run's events."""

from __future__ import annotations

import logging
import re
import threading
import warnings
from contextlib import contextmanager

#: the loggers whose records are a framework's: these names and their children
FRAMEWORKS = ("transformers", "accelerate", "lightning", "pytorch_lightning", "lightning_fabric")

#: log lines known to be harmless, as (logger name prefixes, message pattern): silenced
HARMLESS_LOGS = (
    # Lightning's notes on the hardware it found and did not use, at Trainer() and fit()
    (("lightning", "pytorch_lightning", "lightning_fabric"), r"(GPU|TPU|HPU|IPU) available: "),
    (("lightning", "pytorch_lightning", "lightning_fabric"), r"LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: "),
    # Lightning's advertisements of other products (litlogger, litmodels)
    (("lightning", "pytorch_lightning"), "\N{ELECTRIC LIGHT BULB} Tip: "),
    # the end of a fit that ran its course (the dashboard shows "finished")
    (("lightning", "pytorch_lightning"), r"`Trainer\.fit` stopped: `max_(steps|epochs)=\d+` reached"),
    # transformers 5 on a model whose config names no loss: it uses the causal LM loss, as it should
    (("transformers",), r"`loss_type=None` was set in the config but it is unrecognized"),
)

#: warnings known to be harmless, as (category, module pattern, message pattern): ignored
#: while a framework runs. Each is raised by the framework's own code about its own code.
HARMLESS_WARNINGS = (
    # Lightning's result collection builds torch's deprecated LeafSpec (torch >= 2.10)
    (FutureWarning, r"(lightning\.pytorch|pytorch_lightning)\.utilities\._pytree\Z",
     r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)

_HARMLESS = [(prefixes, re.compile(pattern)) for prefixes, pattern in HARMLESS_LOGS]
_IGNORED = [("ignore", re.compile(message, re.I), category, re.compile(module), 0)
            for category, module, message in HARMLESS_WARNINGS]

_lock = threading.Lock()
_sinks: dict = {}       # thread ident -> its open quiet() blocks' (note, also), innermost last
_handlers: list = []    # the handlers the router is attached to, while any block is open
_filter_lists: list = []  # (the warnings.filters list, the harmless warnings put in it)


def is_framework(name: str) -> bool:
    """Whether a logger is one of the frameworks lmwidget runs.

    Args:
        name: a logger's name.

    Returns:
        True for a name in `FRAMEWORKS` or one of their children.
    """
    return any(name == f or name.startswith(f + ".") for f in FRAMEWORKS)


def is_harmless(name: str, message: str) -> bool:
    """Whether a log line is known to be harmless.

    Args:
        name: the logger's name.
        message: the line, formatted.

    Returns:
        True when `HARMLESS_LOGS` names the logger (or a parent) with a pattern the line
        starts with.
    """
    return _matches(_HARMLESS, name, message)


def _matches(patterns, name: str, message: str) -> bool:
    return any(pattern.match(message) and any(name == p or name.startswith(p + ".") for p in prefixes)
               for prefixes, pattern in patterns)


class _Router(logging.Filter):
    """On the framework loggers' handlers: decides, once per record, what a record logged by a
    framework on a thread inside quiet() becomes. Every other record passes untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        blocks = _sinks.get(record.thread)
        if not blocks or not is_framework(record.name):
            return True
        decided = getattr(record, "_lmwidget_keep", None)
        if decided is None:  # the first handler that sees it; the others agree
            decided = record._lmwidget_keep = _route(record, *blocks[-1])
        return decided


def _route(record: logging.LogRecord, note, also) -> bool:
    """True: the record goes on to the cell (a warning or an error, or nowhere else to go)."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed record is the framework's error: logging reports it as ever
        return True
    if is_harmless(record.name, message) or _matches(also, record.name, message):
        return False
    if note is None:
        return True
    try:
        note(record.name, record.levelno, message)
    except Exception:  # a note that fails must not lose the line
        return True
    return record.levelno >= logging.WARNING  # the cell still shows warnings and errors


_ROUTER = _Router()


def framework_handlers() -> list:
    """The handlers a framework's record can reach now.

    Returns:
        The handlers of every framework logger and of its parents up its chain of
        propagation, and logging's last resort, each once.
    """
    found: dict = {}
    loggers = [logging.root.manager.loggerDict.get(n) for n in list(logging.root.manager.loggerDict)
               if is_framework(n)]
    for logger in loggers:
        while isinstance(logger, logging.Logger):
            for handler in logger.handlers:
                found[id(handler)] = handler
            logger = logger.parent if logger.propagate else None
    if logging.lastResort is not None:
        found[id(logging.lastResort)] = logging.lastResort
    return list(found.values())


def _attach() -> None:
    """The router on every handler a framework's record can reach now (a framework imported
    since the last block opened brought its own)."""
    for handler in framework_handlers():
        if _ROUTER not in handler.filters:
            handler.addFilter(_ROUTER)
            _handlers.append(handler)


def _install() -> None:
    """The first block opened: the harmless warnings ignored."""
    # an "ignore" leaves no mark in the registries of what each place has shown, so adding
    # and removing these needs no reset of them (which would show once-only warnings again)
    filters = warnings.filters
    added = [item for item in _IGNORED if item not in filters]
    filters[:0] = added
    _filter_lists[:] = [(filters, added)]


def _uninstall() -> None:
    """The last block closed: every handler and the warnings filters as they were."""
    for handler in _handlers:
        handler.removeFilter(_ROUTER)
    _handlers.clear()
    for filters, added in _filter_lists:  # and the list in use now, if catch_warnings swapped it
        for target in {id(filters): filters, id(warnings.filters): warnings.filters}.values():
            for item in added:
                if item in target:
                    target.remove(item)
    _filter_lists.clear()


@contextmanager
def quiet(note=None, also=()):
    """Keep frameworks' chatter out of the cell while the block runs on this thread.

    While a block is open on a thread, a record that a framework's logger (transformers,
    accelerate, Lightning: `FRAMEWORKS`) logs on that thread is:

    - silenced when it is known to be harmless (`HARMLESS_LOGS`, by logger and message);
    - given to `note` instead of the cell when it is below WARNING (Lightning's notes, which
      its own handler prints to stderr);
    - given to `note` and still shown when it is a warning or an error.

    Records from other threads and other loggers, warnings your own code raises, and
    exceptions are untouched. Python's warnings filters are process-wide (and
    `warnings.catch_warnings` is not thread-safe), so the framework warnings known to be
    harmless (`HARMLESS_WARNINGS`, each by category, the framework module that raises it and
    its exact message) are ignored in every thread while any block is open. Everything is
    put back when the last block closes. Blocks nest, on one thread and across threads. A
    framework imported inside a block is heard from the next block on (its handlers are
    found as a block opens): import it first.

    Args:
        note: a function `note(logger_name, level, message)` that records a framework's log
            line (a run's events); None: only the harmless lines are kept out.
        also: more lines known to be harmless inside this block only, as (logger name
            prefixes, message pattern) pairs, like `HARMLESS_LOGS`.

    Returns:
        A context manager.

    Raises:
        TypeError: `note` is given and is not callable, or `also` is not pairs of (logger
            name prefixes, message pattern).
    """
    if note is not None and not callable(note):
        raise TypeError(f"note must be a function note(logger_name, level, message) or None; "
                        f"got {type(note).__name__}")
    try:
        extra = [((prefixes,) if isinstance(prefixes, str) else tuple(prefixes), re.compile(pattern))
                 for prefixes, pattern in also]
    except (TypeError, ValueError, re.error) as e:
        raise TypeError(f"also must be (logger name prefixes, message pattern) pairs, e.g. "
                        f"[(('transformers',), r'Setting `pad_token_id`')]; got {also!r} ({e})") from None
    ident = threading.get_ident()
    with _lock:
        if not _sinks:
            _install()
        _attach()
        _sinks.setdefault(ident, []).append((note, extra))
    try:
        yield
    finally:
        with _lock:
            stack = _sinks[ident]
            stack.pop()
            if not stack:
                del _sinks[ident]
            if not _sinks:
                _uninstall()
