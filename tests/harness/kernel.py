"""A real ipykernel and a client that acts on widgets as a browser does (comm messages)."""

import queue
import time

from jupyter_client import KernelManager

from tests.harness.pace import scaled


class Kernel:
    """A real kernel and a client that reads every iopub message."""

    def __init__(self, cwd):
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd))  # its default checkpoint directory lands there
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=scaled(60))
        self.comm_updates = 0  # widget state updates the kernel sent (the dashboard redrawing)
        self.log = []          # every iopub message read, whichever cell it belongs to
        self.last_msg_id = None

    def execute(self, code, timeout=60):
        """Run a cell; return (stdout, stderr, error text, display data)."""
        msg_id = self.last_msg_id = self.kc.execute(code)
        out, err, error, displays = [], [], None, []
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"cell did not finish within {timeout} s: {code!r}") from None
            self.log.append(msg)
            kind, content = msg["msg_type"], msg["content"]
            if kind == "comm_msg" and content["data"].get("method") == "update":
                self.comm_updates += 1
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if kind == "stream":
                (out if content["name"] == "stdout" else err).append(content["text"])
            elif kind == "error":
                error = "\n".join(content["traceback"])
            elif kind in ("display_data", "execute_result"):
                displays.append(content["data"])
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out), "".join(err), error, displays

    def value(self, expression):
        out, _, error, _ = self.execute(
            f"_v = {expression}\nprint(repr(_v.item() if hasattr(_v, 'item') else _v))")
        assert error is None, error
        return eval(out)

    def wait_for(self, expression, expected, timeout=10):
        deadline = time.monotonic() + scaled(timeout)
        while (got := self.value(expression)) != expected:
            assert time.monotonic() < deadline, f"{expression} is {got!r}, not {expected!r}"
            time.sleep(0.05)

    def send_comm(self, comm_id, data):
        """What a browser sends when a widget is clicked or changed."""
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.kc.shell_channel.send(msg)

    def click(self, comm_id):
        self.send_comm(comm_id, {"method": "custom", "content": {"event": "click"}})

    def set_value(self, comm_id, value):
        self.send_comm(comm_id, {"method": "update", "state": {"value": value}, "buffer_paths": []})

    def pause_from_dashboard(self, step_expression="run.step", controls=("lr_slider", "stop_button")):
        """Click the dashboard's Pause as a browser would; check that training holds still for
        2 s; return the controls' comm ids and the step it holds at."""
        ids = {name: self.value(f"run.dashboard.{name}.model_id") for name in ("pause_button", *controls)}
        self.click(ids["pause_button"])
        self.wait_for("run.state", "paused", timeout=10)
        frozen = self.value("run.step")
        time.sleep(2.0)
        assert self.value(step_expression) == frozen, f"training went on while paused ({step_expression})"
        return ids, frozen

    def shutdown(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
