"""%lmtrain and %lmstop in a real ipykernel, with this test acting as the browser over comms."""

import time

import pytest

from tests.harness.kernel import Kernel
from tests.harness.pace import scaled

pytestmark = pytest.mark.slow

TINY = "--n-layer 1 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    k = Kernel(tmp_path_factory.mktemp("kernel-cwd"))
    yield k
    k.shutdown()


def test_lmtrain_in_a_kernel_obeys_the_browser(kernel):
    _, _, error, _ = kernel.execute("%load_ext lmwidget")
    assert error is None, error
    t0 = time.monotonic()
    _, err, error, displays = kernel.execute(f"run = %lmtrain --model gpt --steps 1000000 --lr 3e-3 {TINY}")
    assert error is None, error
    assert time.monotonic() - t0 < scaled(10), "the cell must return at once"
    assert any("application/vnd.jupyter.widget-view+json" in d for d in displays), "no dashboard shown"
    assert err == ""
    kernel.wait_for("run.state", "running")
    kernel.wait_for("run.step > 20", True)

    pause_id = kernel.value("run.dashboard.pause_button.model_id")
    slider_id = kernel.value("run.dashboard.lr_slider.model_id")
    updates = kernel.comm_updates
    time.sleep(1.0)
    kernel.execute("pass")
    assert kernel.comm_updates > updates, "the dashboard is not redrawing from its thread"

    kernel.click(pause_id)
    kernel.wait_for("run.state", "paused", timeout=5)
    frozen = kernel.value("run.step")
    time.sleep(0.5)
    assert kernel.value("run.step") == frozen
    kernel.wait_for("run.dashboard.pause_button.description", "Resume", timeout=5)

    kernel.set_value(slider_id, 0.001)
    kernel.wait_for("run.lr", 0.001, timeout=5)
    kernel.click(pause_id)
    kernel.wait_for("run.state", "running", timeout=5)
    kernel.wait_for(f"run.step > {frozen + 5}", True)
    assert kernel.value("run.history.lr.iloc[-1]") == 0.001
    assert kernel.value(f"run.history.lr[run.history.step <= {frozen}].unique().tolist()") == [0.003]
    assert kernel.value("[k for k in run.events.kind if k != 'eval']") == ["pause", "lr", "resume"]

    for _ in range(2):  # re-running the cell warns every time, not once per session
        out, err, error, displays = kernel.execute(f"again = %lmtrain --steps 100 {TINY}")
        assert error is None and "%lmstop" in err
    assert kernel.value("again is run")
    assert kernel.value("sum(t.name.startswith('lmwidget-run') for t in __import__('threading').enumerate())") == 1

    out, _, error, _ = kernel.execute("%lmstop")
    assert error is None and "stopped at step" in out
    assert kernel.value("run.state") == "stopped"
    assert kernel.value("run._thread.is_alive()") is False


def test_lmtrain_help_and_errors(kernel):
    kernel.execute("%load_ext lmwidget")
    out, _, error, _ = kernel.execute("%lmtrain --help")
    assert error is None
    for flag in ("--model", "--data", "--steps", "--lr", "--schedule", "--grad-clip", "--concurrent"):
        assert flag in out
    # a magic's usage errors are one clean line on stderr (IPython's UsageError), no traceback
    _, err, _, _ = kernel.execute("%lmtrain --lr -1")
    assert "UsageError" in err and "lr must be a finite number > 0" in err and "got -1.0" in err
    _, err, _, _ = kernel.execute("%lmtrain --lr fast")
    assert "invalid float value: 'fast'" in err and "%lmtrain --help" in err
    _, err, _, _ = kernel.execute("%lmtrain --model mystery")
    assert "neither gpt, lstm nor the name of a variable" in err
    assert kernel.value("[r.state for r in __import__('lmwidget').runs() if r.state == 'running']") == []


def test_lmtrain_takes_a_model_variable_and_finishes(kernel):
    kernel.execute("%load_ext lmwidget\n%lmstop")
    _, _, error, _ = kernel.execute(
        "import lmwidget, torch\n"
        "vocab = lmwidget.Dataset(lmwidget.data.text.builtin_text()).vocab_size\n"
        "mine = lmwidget.LSTM(vocab, block_size=32, n_layer=1, n_embd=32)\n"
        f"r2 = %lmtrain --model mine --steps 40 {TINY}")
    assert error is None, error
    kernel.wait_for("r2.state", "finished", timeout=30)
    assert kernel.value("r2.model is mine")
    assert kernel.value("len(r2.history)") == 40


def test_lmtrain_takes_policies_and_callbacks(kernel):
    kernel.execute("%load_ext lmwidget\n%lmstop")
    _, _, error, _ = kernel.execute(
        "from lmwidget import Callback\n"
        "class Count(Callback):\n"
        "    evals = 0\n"
        "    def on_eval(self, run, step, val_loss):\n"
        "        Count.evals += 1\n"
        "mine = [Count()]\n"
        f"r3 = %lmtrain --steps 100000 --lr 1e-9 --eval-interval 10 --early-stopping 2 --callbacks mine {TINY}")
    assert error is None, error
    kernel.wait_for("r3.state", "stopped", timeout=30)
    step = kernel.value("r3.step")  # a flat val loss: at most a few chance improvements
    assert step % 10 == 0 and 30 <= step <= 100
    assert kernel.value("Count.evals") == step // 10
    assert kernel.value("r3.events.detail.iloc[-1].startswith('early stopping')")
    _, err, _, _ = kernel.execute(f"%lmtrain --callbacks nowhere {TINY}")
    assert "UsageError" in err and "--callbacks 'nowhere' is not the name of a variable" in err
    _, err, _, _ = kernel.execute(f"x = 3\n%lmtrain --callbacks x {TINY}")
    assert "callbacks must be lmwidget.Callback objects" in err and "got 3" in err


def test_lmtrain_resume_and_the_summary_left_in_the_cell(kernel, tmp_path):
    """A run's cell gets the static summary when the run ends (an update of its display,
    routed to that cell); --resume continues the checkpoint with its history."""
    kernel.execute("%load_ext lmwidget\n%lmstop")
    _, _, error, displays = kernel.execute(
        f"first = %lmtrain --steps 30 --checkpoint-every 10 --checkpoint-dir {tmp_path} {TINY}")
    assert error is None, error
    cell = kernel.last_msg_id
    shown = [m for m in kernel.log if m["msg_type"] == "display_data"
             and m["parent_header"].get("msg_id") == cell]
    display_id = shown[0]["content"]["transient"]["display_id"]
    kernel.execute("first.wait()")
    kernel.execute("import time; time.sleep(1)")  # the updater's last pass

    def updates():
        return [m for m in kernel.log if m["msg_type"] == "update_display_data"
                and m["content"]["transient"].get("display_id") == display_id]

    deadline = time.monotonic() + 10
    while not updates() and time.monotonic() < deadline:
        kernel.execute("time.sleep(0.2)")
    (update,) = updates()
    assert update["parent_header"]["msg_id"] == cell  # a front end routes it to the run's cell
    data = update["content"]["data"]
    assert data["application/vnd.jupyter.widget-view+json"] == \
        shown[0]["content"]["data"]["application/vnd.jupyter.widget-view+json"]
    assert "finished at step 30/30" in data["text/html"] and data["text/html"].count("<svg") == 5

    _, _, error, _ = kernel.execute(f"again = %lmtrain --resume {tmp_path} --steps 50")
    assert error is None, error
    assert kernel.value("again.checkpoint_dir.parent.name") == "lmwidget-checkpoints"  # its own
    kernel.wait_for("again.state", "finished", timeout=30)
    assert kernel.value("again.restored_from") == str(tmp_path / "step-0000030.pt")
    assert kernel.value("again.history.step.tolist()") == list(range(1, 51))
    assert kernel.value("again.config.n_embd") == 32  # the checkpoint's options
    _, err, _, _ = kernel.execute(f"%lmtrain --resume {tmp_path / 'nothing.pt'}")
    assert "UsageError" in err and "no checkpoint at" in err
    _, err, _, _ = kernel.execute(f"%lmtrain --resume {tmp_path} --n-embd 64 --steps 60")
    assert "n_embd=64 differs from checkpoint" in err


def test_lmfind_runs_the_range_test_and_lmtrain_takes_ghosts(kernel):
    kernel.execute("%load_ext lmwidget\n%lmstop")
    _, _, error, displays = kernel.execute(f"finder = %lmfind --steps 40 {TINY}")
    assert error is None, error
    assert any("application/vnd.jupyter.widget-view+json" in d for d in displays), "no chart shown"
    kernel.wait_for("finder.done", True, timeout=60)
    assert kernel.value("len(finder.lrs) > 10 and finder.suggestion is not None")
    kernel.execute(f"g = %lmtrain --steps 10 {TINY}\ng.wait()")
    _, _, error, _ = kernel.execute(f"r = %lmtrain --steps 20 --ghosts 1 {TINY}")
    assert error is None, error
    kernel.wait_for("r.state", "finished", timeout=30)
    assert kernel.value("[x.split(':')[0] for x in r.dashboard._ghost_labels] == [f'run {g.id}']")
    _, err, _, _ = kernel.execute("%lmfind --start 1 --end 0.1")
    assert "UsageError" in err and "end must be larger than start" in err
    _, err, _, _ = kernel.execute("%lmfind --lr 3")
    assert "%lmfind: unrecognized arguments: --lr 3" in err
