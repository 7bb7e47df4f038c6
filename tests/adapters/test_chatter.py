"""quiet(): a framework's chatter on a quiet thread silenced or noted, everything else untouched, and nothing left changed."""

from __future__ import annotations

import io
import logging
import threading
import warnings
from pathlib import Path

import pytest

from lmwidget.adapters import chatter
from lmwidget.adapters.chatter import quiet

LEAFSPEC = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."


@pytest.fixture
def probe():
    """A framework logger and a user's logger, each printing into its own text buffer."""
    made = []

    def logger(name):
        out = io.StringIO()
        lg = logging.getLogger(name)
        handler = logging.StreamHandler(out)
        made.append((lg, handler, lg.level, lg.propagate))
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
        return lg, out

    yield logger
    for lg, handler, level, propagate in made:
        lg.removeHandler(handler)
        lg.setLevel(level)
        lg.propagate = propagate


def in_thread(fn):
    t = threading.Thread(target=fn)
    t.start()
    t.join(30)
    assert not t.is_alive()


def test_a_framework_line_on_a_quiet_thread_is_silenced_noted_or_still_shown(probe, logging_state):
    framework, shown = probe("lightning.pytorch.lmwidget_probe")
    user, user_shown = probe("my_model")
    before = logging_state()
    notes, inside, done = [], threading.Event(), threading.Event()

    def training():
        with quiet(lambda *note: notes.append(note)):
            framework.info("GPU available: False, used: False")
            framework.info("`Trainer.fit` stopped: `max_steps=3` reached.")
            framework.info("Restoring states from the checkpoint path at %s", "last.ckpt")
            inside.set()
            done.wait(10)  # meanwhile another thread, not quiet, logs the same framework's lines
            framework.warning("The dataloader does not have many workers")
            framework.error("the checkpoint could not be written")
            user.warning("my model's own warning")

    t = threading.Thread(target=training)
    t.start()
    assert inside.wait(10)
    framework.info("TPU available: False, using: 0 TPU cores")  # the caller's thread: as ever
    done.set()
    t.join(10)
    text = shown.getvalue()
    assert "GPU available" not in text and "max_steps=3" not in text  # known harmless: silenced
    assert "Restoring states" not in text  # a framework's note: to the run's events
    assert "TPU available" in text  # another thread's line is untouched
    assert "many workers" in text and "could not be written" in text  # warnings and errors stay
    assert "my model's own warning" in user_shown.getvalue()
    name = "lightning.pytorch.lmwidget_probe"
    assert notes == [(name, logging.INFO, "Restoring states from the checkpoint path at last.ckpt"),
                     (name, logging.WARNING, "The dataloader does not have many workers"),
                     (name, logging.ERROR, "the checkpoint could not be written")]
    before.assert_unchanged()


def test_without_a_note_only_the_harmless_lines_are_kept_out(probe):
    framework, shown = probe("transformers.lmwidget_probe")
    with quiet():
        framework.warning("`loss_type=None` was set in the config but it is unrecognized. Using ...")
        framework.warning("`loss_type=ForMaskedLM` was set in the config but it is unrecognized.")
        framework.info("a note with nowhere else to go")
    text = shown.getvalue()
    assert "loss_type=None" not in text
    assert "loss_type=ForMaskedLM" in text and "nowhere else to go" in text  # yours, or unknown


def test_also_silences_more_lines_inside_its_block_only(probe):
    framework, shown = probe("transformers.lmwidget_probe")
    padded = "We strongly recommend passing in an `attention_mask` since your input_ids may be padded."
    with quiet(lambda *note: None):
        with quiet(lambda *note: None, also=[("transformers", r"We strongly recommend")]):
            framework.warning(padded)
        framework.warning(padded)
    assert shown.getvalue().count("We strongly recommend") == 1  # the outer block's, shown


def test_a_note_that_fails_loses_nothing(probe):
    framework, shown = probe("accelerate.lmwidget_probe")

    def broken(*note):
        raise RuntimeError("the dashboard has gone")

    with quiet(broken):
        framework.info("a note from accelerate")
    assert "a note from accelerate" in shown.getvalue()


def test_harmless_framework_warnings_are_ignored_only_while_a_block_is_open(logging_state):
    before = logging_state()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet():
            warnings.warn_explicit(LEAFSPEC, FutureWarning, "_pytree.py", 21,
                                   module="lightning.pytorch.utilities._pytree")
            warnings.warn_explicit(LEAFSPEC, FutureWarning, "mine.py", 3, module="my_model")  # your code's
            warnings.warn("my own warning", UserWarning)
            in_thread(lambda: warnings.warn("my thread's warning", UserWarning))
        warnings.warn_explicit(LEAFSPEC, FutureWarning, "_pytree.py", 21,
                               module="lightning.pytorch.utilities._pytree")
    assert [(str(w.message)[:30], w.filename) for w in seen] == [
        (LEAFSPEC[:30], "mine.py"), ("my own warning", __file__), ("my thread's warning", __file__),
        (LEAFSPEC[:30], "_pytree.py")]
    before.assert_unchanged()


def test_blocks_nest_across_threads_and_the_last_one_out_puts_everything_back(logging_state):
    before = logging_state()
    opened, closing = threading.Event(), threading.Event()

    def other():
        with quiet():
            opened.set()
            closing.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert opened.wait(10)
    with quiet():
        with quiet():
            pass
        assert all(chatter._ROUTER in h.filters for h in chatter.framework_handlers())
    assert chatter._IGNORED[0] in warnings.filters  # the other thread's block is still open
    closing.set()
    t.join(10)
    assert chatter._IGNORED[0] not in warnings.filters
    before.assert_unchanged()


def test_an_exception_in_the_block_is_raised_and_everything_put_back(logging_state):
    before = logging_state()
    with pytest.raises(ValueError, match="the framework failed"):
        with quiet(lambda *note: None):
            raise ValueError("the framework failed")
    before.assert_unchanged()


def test_what_quiet_refuses():
    with pytest.raises(TypeError, match="note must be a function note\\(logger_name, level, message\\) or None; got str"):
        with quiet("events"):
            pass
    with pytest.raises(TypeError, match="also must be \\(logger name prefixes, message pattern\\) pairs"):
        with quiet(also=["transformers"]):
            pass
    assert not chatter._sinks


@pytest.mark.slow
def test_in_a_kernel_no_cell_shows_the_frameworks_chatter(tmp_path):
    """Notebook 05's way, in a real kernel: a Trainer and a Lightning fit run by lmwidget, their
    output read wherever the kernel sent it (a thread's output goes to the newest cell)."""
    pytest.importorskip("transformers")
    pytest.importorskip("lightning")
    from tests.harness.kernel import Kernel

    harness = Path(__file__).parents[1] / "harness" / "frameworks.py"
    kernel = Kernel(tmp_path)
    try:
        _, _, error, _ = kernel.execute(harness.read_text())
        assert error is None, error
        start = len(kernel.log)
        for code in ("import lmwidget\nfrom lmwidget.adapters.chatter import quiet\n"
                     "hf = lmwidget.fit(hf_trainer('out', max_steps=5))",
                     "hf.wait(120)\nprint('sampled', len(hf.sample()) > 0, hf.state)",
                     "import lightning\nwith quiet():  # as notebook 05 makes its Trainer\n    module, trainer, train, val = lightning_setup(max_steps=5, val_check_interval=5)\n"
                     "pl = lmwidget.fit(trainer, module, train, val)",
                     "pl.wait(120)\nprint(pl.state)"):
            _, _, error, _ = kernel.execute(code, timeout=180)
            assert error is None, error
        shown = "".join(m["content"]["text"] for m in kernel.log[start:] if m["msg_type"] == "stream")
        assert shown == "sampled True finished\nfinished\n", shown  # and nothing else, in any cell
    finally:
        kernel.shutdown()
