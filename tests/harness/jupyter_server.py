"""Helpers for real-browser end-to-end tests of lmwidget.

* :class:`JupyterServer` starts JupyterLab or Jupyter Notebook 7 on 127.0.0.1 (free port,
  token, ``--no-browser``, ``--allow-root``, an isolated config/runtime/settings dir),
  waits until it answers, and stops it together with every kernel it started.
* :func:`write_notebook` writes an ``.ipynb`` with ``metadata.kernelspec = python3``.
* :func:`launch_browser` starts Debian's ``/usr/bin/chromium`` through Playwright.
* :class:`NotebookPage` opens a notebook in the page, runs all cells, reads outputs,
  executes extra cells, collects console messages and saves screenshots.
* :class:`KernelProbe` talks to the notebook's kernel directly over ZMQ (same kernel,
  same user namespace) to check kernel-side facts without touching the page.

Only 127.0.0.1 is used.  Artifacts (screenshots, console logs, server logs) go to
``$LMWIDGET_ARTIFACTS`` or ``<system temp>/lmwidget-artifacts``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable

from tests.harness.pace import scaled

CHROMIUM = os.environ.get("LMWIDGET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# JupyterLab >= 4.4 sends widget comm messages over kernel subshells by default.  The
# switch is the user setting ``commsOverSubshells`` of the settings plugin
# ``@jupyterlab/apputils-extension:kernels-settings`` (values "disabled", "perComm",
# "perCommTarget"; default "perCommTarget").  Notebook 7 uses the same plugin.
KERNELS_SETTINGS_PLUGIN = "@jupyterlab/apputils-extension:kernels-settings"
COMMS_OVER_SUBSHELLS_OFF = {KERNELS_SETTINGS_PLUGIN: {"commsOverSubshells": "disabled"}}
COMMS_OVER_SUBSHELLS_ON = {KERNELS_SETTINGS_PLUGIN: {"commsOverSubshells": "perCommTarget"}}

# Keep the page quiet and off the network: no news/update toasts.
QUIET_SETTINGS = {
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def artifacts_dir() -> Path:
    d = Path(os.environ.get("LMWIDGET_ARTIFACTS") or Path(tempfile.gettempdir()) / "lmwidget-artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:120] or "x"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WaitAborted(Exception):
    """Raised by a :func:`wait_for` predicate to give up at once (not retried)."""


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1,
             message: str | Callable[[], str] = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; return that value.
    ``message`` (a string, or a callable evaluated on timeout) describes what was awaited."""
    timeout = scaled(timeout)  # set on the reference machine: as long as it must be here
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except WaitAborted:
            raise
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            if callable(message):
                try:
                    message = message()
                except Exception as exc:  # noqa: BLE001
                    message = f"<{exc!r}>"
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {message or predicate}{detail}")
        time.sleep(interval)


# --------------------------------------------------------------------------- notebooks


def write_notebook(path: Path | str, cells: Iterable[str | dict]) -> Path:
    """Write a v4 notebook with a python3 kernelspec.  ``cells``: code strings, or dicts
    ``{"cell_type": "markdown"|"code", "source": ...}``."""
    nb_cells = []
    for c in cells:
        if isinstance(c, str):
            c = {"cell_type": "code", "source": c}
        cell = {"cell_type": c.get("cell_type", "code"), "metadata": {}, "source": c["source"]}
        if cell["cell_type"] == "code":
            cell.update(execution_count=None, outputs=[])
        nb_cells.append(cell)
    nb = {
        "cells": nb_cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    for i, cell in enumerate(nb_cells):
        cell["id"] = f"cell-{i}"
    path = Path(path)
    path.write_text(json.dumps(nb, indent=1))
    return path


def copy_notebook(src: Path | str, dest: Path | str) -> Path:
    """Copy a notebook, clearing outputs and making sure it names the python3 kernel."""
    nb = json.loads(Path(src).read_text())
    nb.setdefault("metadata", {})["kernelspec"] = {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    }
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    dest = Path(dest)
    dest.write_text(json.dumps(nb, indent=1))
    return dest


# --------------------------------------------------------------------------- server


class JupyterServer:
    """A JupyterLab (``app="lab"``) or Notebook 7 (``app="notebook"``) server process."""

    def __init__(
        self,
        app: str = "lab",
        root_dir: Path | str | None = None,
        settings: dict[str, dict] | None = None,
        extra_args: Iterable[str] = (),
        name: str | None = None,
        env: dict[str, str] | None = None,
    ):
        if app not in ("lab", "notebook"):
            raise ValueError(app)
        self.app = app
        self.name = name or app
        self._own_tmp = tempfile.mkdtemp(prefix=f"lmwidget-{slug(self.name)}-")
        self.home = Path(self._own_tmp)
        self.root_dir = Path(root_dir) if root_dir else self.home / "root"
        self.root_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir = self.home / "runtime"
        self.settings_dir = self.home / "user-settings"
        self.settings = {**QUIET_SETTINGS, **(settings or {})}
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.token = secrets.token_hex(16)
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path = artifacts_dir() / f"server-{slug(self.name)}.log"
        self._log_file = None

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_user_settings(self, settings: dict[str, dict]) -> None:
        """Write ``<plugin id>`` -> settings dicts as JupyterLab user settings files."""
        for plugin_id, values in settings.items():
            pkg, plugin = plugin_id.split(":", 1)
            f = self.settings_dir / pkg / f"{plugin}.jupyterlab-settings"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(values, indent=2))

    def start(self, timeout: float = 90) -> "JupyterServer":
        for sub in ("config", "data", "workspaces"):
            (self.home / sub).mkdir(exist_ok=True)
        self.runtime_dir.mkdir(exist_ok=True)
        self.write_user_settings(self.settings)
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(self.home / "config"),
            JUPYTER_DATA_DIR=str(self.home / "data"),  # no user kernelspecs/extensions
            JUPYTER_RUNTIME_DIR=str(self.runtime_dir),
            JUPYTERLAB_SETTINGS_DIR=str(self.settings_dir),
            JUPYTERLAB_WORKSPACES_DIR=str(self.home / "workspaces"),
            JUPYTER_PLATFORM_DIRS="1",
            PYTHONUNBUFFERED="1",
        )
        # Make sure the kernel (same interpreter as us) finds this checkout's package even
        # when it is not installed (an explicit PYTHONPATH still comes first).
        repo = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), repo) if p)
        env.update(self.extra_env)
        module = "jupyterlab" if self.app == "lab" else "notebook"
        app_cls = "LabApp" if self.app == "lab" else "JupyterNotebookApp"
        last_err = None
        for _attempt in range(3):
            self.port = free_port()
            cmd = [
                sys.executable, "-m", module,
                "--no-browser",
                "--allow-root",
                "--ip=127.0.0.1",
                f"--port={self.port}",
                "--port-retries=0",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.root_dir}",
                "--ServerApp.terminals_enabled=False",
                f"--{app_cls}.expose_app_in_browser=True",
                f"--{app_cls}.user_settings_dir={self.settings_dir}",
                f"--{app_cls}.workspaces_dir={self.home / 'workspaces'}",
                *self.extra_args,
            ]
            self._log_file = open(self.log_path, "ab")
            self._log_file.write(f"\n$ {' '.join(cmd)}\n".encode())
            self._log_file.flush()
            self.proc = subprocess.Popen(
                cmd,
                cwd=str(self.root_dir),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            # even if the test process dies without teardown, leave no server behind
            atexit.register(self.stop)
            try:
                wait_for(self._ready, timeout, interval=0.25, message=f"{self.name} server to answer")
                return self
            except (TimeoutError, WaitAborted) as exc:  # e.g. the port was taken meanwhile
                last_err = exc
                self.stop()
        raise RuntimeError(f"{self.name} server did not start: {last_err}; log: {self.log_path}")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise WaitAborted(f"server exited with {self.proc.returncode}; see {self.log_path}")
        try:
            self.api("GET", "/api/status", timeout=2)
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def _descendants(self) -> list:
        try:
            import psutil
        except ImportError:  # pragma: no cover
            return []
        if self.proc is None:
            return []
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def shutdown_kernels(self, timeout: float = 15) -> None:
        """Shut every kernel down through the REST API (gracefully)."""
        try:
            kernels = self.api("GET", "/api/kernels", timeout=5)
        except Exception:  # noqa: BLE001
            return
        for k in kernels:
            with contextlib.suppress(Exception):
                self.api("DELETE", f"/api/kernels/{k['id']}", timeout=timeout)

    def stop(self, timeout: float = 15) -> None:
        """Stop kernels and server; kill anything left (no stray processes)."""
        if self.proc is None:
            return
        children = self._descendants()
        if self.proc.poll() is None:
            self.shutdown_kernels()
            children += [c for c in self._descendants() if c not in children]
            with contextlib.suppress(Exception):
                self.api("POST", "/api/shutdown", timeout=5)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.proc.pid, sig)
                    try:
                        self.proc.wait(timeout=5)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        # Kernels run in their own sessions: make sure none survives its server.
        for c in children:
            with contextlib.suppress(Exception):
                if c.is_running():
                    c.terminate()
        try:
            import psutil

            _gone, alive = psutil.wait_procs([c for c in children], timeout=5)
            for c in alive:
                with contextlib.suppress(Exception):
                    c.kill()
        except ImportError:  # pragma: no cover
            pass
        self.proc = None
        atexit.unregister(self.stop)
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._own_tmp, ignore_errors=True)

    def __enter__(self) -> "JupyterServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # -- URLs and kernels ----------------------------------------------------------------
    def notebook_url(self, name: str) -> str:
        if self.app == "lab":
            # ``reset``: start from an empty workspace, not with earlier tests' notebooks
            return f"{self.base_url}/lab/tree/{name}?reset&token={self.token}"
        return f"{self.base_url}/notebooks/{name}?token={self.token}"

    def sessions(self) -> list[dict]:
        return self.api("GET", "/api/sessions")

    def kernel_for(self, notebook_name: str) -> dict | None:
        for s in self.sessions():
            if s.get("path") == notebook_name or s.get("path", "").endswith("/" + notebook_name):
                return s.get("kernel")
        return None

    def probe(self, notebook_name: str, timeout: float = 60) -> "KernelProbe":
        kernel = wait_for(lambda: self.kernel_for(notebook_name), timeout, message=f"a kernel for {notebook_name}")
        cf = self.runtime_dir / f"kernel-{kernel['id']}.json"
        wait_for(cf.exists, timeout, message=f"connection file {cf}")
        return KernelProbe(cf)


class KernelProbe:
    """A second client of the notebook's kernel (direct ZMQ via the connection file)."""

    def __init__(self, connection_file: Path):
        from jupyter_client import BlockingKernelClient

        self.client = BlockingKernelClient()
        self.client.load_connection_file(str(connection_file))
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def execute(self, code: str, timeout: float = 30) -> str:
        """Run ``code`` in the kernel's user namespace; return its stdout (raise on error)."""
        out: list[str] = []
        errors: list[str] = []

        def hook(msg):
            t = msg["msg_type"]
            if t == "stream":
                out.append(msg["content"]["text"])
            elif t == "error":
                errors.append("\n".join(msg["content"].get("traceback", [])) or msg["content"].get("evalue", ""))
            elif t in ("execute_result", "display_data"):
                out.append(msg["content"]["data"].get("text/plain", ""))

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=hook, store_history=False)
        if errors or reply["content"]["status"] != "ok":
            tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(errors))
            raise RuntimeError(f"kernel error running {code!r}:\n{tb}")
        return "".join(out)

    def eval(self, expr: str, timeout: float = 30) -> Any:
        """Evaluate ``expr`` in the kernel and return it (must be JSON-serialisable)."""
        marker = "__LMW_PROBE__"
        text = self.execute(
            f"import json as __j\nprint({marker!r} + __j.dumps({expr}, default=str))", timeout=timeout
        )
        for line in text.splitlines():
            if line.startswith(marker):
                return json.loads(line[len(marker):])
        raise RuntimeError(f"no probe output for {expr!r}: {text!r}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop_channels()


# --------------------------------------------------------------------------- browser


def launch_browser(playwright, headless: bool = True, extra_args: Iterable[str] = ()):
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=headless,
        args=[*CHROMIUM_ARGS, *extra_args],
    )


class ConsoleLog:
    """Collects console messages and uncaught page errors of a page."""

    def __init__(self, page):
        self.entries: list[dict] = []
        page.on("console", self._on_console)
        page.on("pageerror", self._on_pageerror)

    def _on_console(self, msg) -> None:
        try:
            loc = msg.location or {}
        except Exception:  # noqa: BLE001
            loc = {}
        self.entries.append(
            {"t": time.time(), "type": msg.type, "text": msg.text, "url": loc.get("url", "")}
        )

    def _on_pageerror(self, err) -> None:
        self.entries.append(
            {"t": time.time(), "type": "pageerror", "text": f"{err}\n{getattr(err, 'stack', '')}", "url": ""}
        )

    def errors(self) -> list[dict]:
        return [e for e in self.entries if e["type"] in ("error", "pageerror")]

    def warnings(self) -> list[dict]:
        return [e for e in self.entries if e["type"] == "warning"]

    def matching(self, pattern: str, kinds: Iterable[str] = ("error", "pageerror")) -> list[dict]:
        rx = re.compile(pattern, re.I)
        return [e for e in self.entries if e["type"] in kinds and (rx.search(e["text"]) or rx.search(e["url"]))]

    def dump(self, path: Path) -> Path:
        with open(path, "w") as f:
            for e in self.entries:
                f.write(f"[{e['type']}] {e['text']}" + (f"  ({e['url']})" if e["url"] else "") + "\n")
        return path


PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"


class NotebookPage:
    """A notebook opened in JupyterLab or Notebook 7, driven through the real UI."""

    def __init__(self, page, server: JupyterServer, name: str, label: str | None = None):
        self.page = page
        self.server = server
        self.name = name
        self.label = slug(label or f"{server.name}-{Path(name).stem}")
        self.console = ConsoleLog(page)
        self._shot = 0
        self.shots: list[Path] = []

    # -- artifacts -------------------------------------------------------------------------
    def screenshot(self, stage: str, full_page: bool = False, scroll_to: str | None = None) -> Path:
        """Save ``<label>-NN-<stage>.png``; ``scroll_to``: a selector to bring into view first."""
        self._shot += 1
        path = artifacts_dir() / f"{self.label}-{self._shot:02d}-{slug(stage)}.png"
        if scroll_to:
            with contextlib.suppress(Exception):
                loc = self.page.locator(scroll_to).first
                if loc.count():
                    loc.evaluate("e => e.scrollIntoView({block: 'start'})")
        with contextlib.suppress(Exception):
            self.page.screenshot(path=str(path), full_page=full_page, timeout=15000)
            self.shots.append(path)
        return path

    def save_console(self) -> Path:
        return self.console.dump(artifacts_dir() / f"{self.label}-console.log")

    # -- opening and running ---------------------------------------------------------------
    def open(self, timeout: float = 90) -> "NotebookPage":
        self.page.goto(self.server.notebook_url(self.name), wait_until="domcontentloaded", timeout=timeout * 1000)
        self.page.locator(f"{PANEL} .jp-Notebook .jp-Cell").first.wait_for(timeout=timeout * 1000)
        self.wait_kernel_idle(timeout)
        return self

    def app_eval(self, js: str, arg: Any = None) -> Any:
        """Evaluate JS with ``app`` bound to the JupyterLab/Notebook application object."""
        return self.page.evaluate(f"(arg) => {{ const app = window.jupyterapp; {js} }}", arg)

    def kernel_status(self) -> str | None:
        return self.app_eval(
            """
            const w = app && app.shell && app.shell.currentWidget;
            const ctx = w && w.sessionContext;
            if (!ctx || !ctx.session || !ctx.session.kernel) return null;
            return ctx.session.kernel.status + '/' + ctx.session.kernel.connectionStatus;
            """
        )

    def wait_kernel_idle(self, timeout: float = 90) -> None:
        wait_for(
            lambda: self.kernel_status() == "idle/connected",
            timeout,
            interval=0.25,
            message=lambda: f"kernel of {self.name} to be idle (last: {self._safe_status()})",
        )

    def _safe_status(self):
        try:
            return self.kernel_status()
        except Exception as exc:  # noqa: BLE001
            return repr(exc)

    def comms_over_subshells(self) -> str | None:
        """The frontend's effective commsOverSubshells mode (needs expose_app_in_browser)."""
        return self.app_eval("return app.serviceManager.kernels.commsOverSubshells ?? null;")

    def focus_notebook(self) -> None:
        # Command mode on the notebook: click the panel background-ish area (prompt of cell 1).
        self.page.locator(f"{PANEL} .jp-Cell .jp-InputPrompt").first.click()
        self.page.keyboard.press("Escape")

    def run_all(self) -> None:
        """Run all cells through the application's menu bar (Run > Run All Cells)."""
        self.focus_notebook()
        menubar = self.page.locator(".lm-MenuBar")
        menubar.get_by_text("Run", exact=True).first.click()
        item = self.page.locator(".lm-Menu .lm-Menu-item", has_text=re.compile(r"^\s*Run All Cells"))
        item.first.click()

    def code_cells(self):
        return self.page.locator(f"{PANEL} .jp-Notebook .jp-CodeCell")

    def prompts(self) -> list[str]:
        # textContent, not innerText: JupyterLab skips rendering off-screen cells
        # (content-visibility), whose innerText is then empty
        texts = self.code_cells().locator(".jp-InputPrompt").evaluate_all("els => els.map(e => e.textContent)")
        return [t.strip() for t in texts]

    def wait_all_executed(self, timeout: float = 120) -> None:
        """Wait until every code cell shows an execution count ``[n]:`` (not ``[*]:``/empty)."""

        def done():
            prompts = self.prompts()
            return prompts and all(re.fullmatch(r"\[\d+\]:?", p) for p in prompts)

        wait_for(done, timeout, interval=0.25, message=lambda: f"all cells executed (prompts: {self._safe_prompts()})")

    def _safe_prompts(self):
        try:
            return self.prompts()
        except Exception as exc:  # noqa: BLE001
            return repr(exc)

    def cell_output_text(self, index: int) -> str:
        cell = self.code_cells().nth(index)
        texts = cell.locator(".jp-OutputArea-output").evaluate_all("els => els.map(e => e.textContent)")
        return "\n".join(texts)

    def error_outputs(self) -> list[str]:
        return self.page.locator(
            f"{PANEL} .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
        ).evaluate_all("els => els.map(e => e.textContent)")

    def execute_in_new_cell(self, code: str, timeout: float = 60) -> str:
        """Append a code cell at the end, type ``code``, Shift+Enter, return its output text."""
        n_before = self.code_cells().count()
        last = self.code_cells().nth(n_before - 1)
        last.locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Escape")
        self.page.keyboard.press("b")  # command mode: insert a cell below
        wait_for(lambda: self.code_cells().count() == n_before + 1, 10, message="new cell")
        cell = self.code_cells().nth(n_before)
        editor = cell.locator(".cm-content")
        editor.click()
        # Type line by line; avoid auto-indent surprises by using a single-line program.
        self.page.keyboard.insert_text(code)
        self.page.keyboard.press("Shift+Enter")

        def finished():
            p = cell.locator(".jp-InputPrompt").text_content().strip()
            return re.fullmatch(r"\[\d+\]:?", p) is not None

        wait_for(finished, timeout, interval=0.1, message=f"cell {code!r} to finish")
        return self.cell_output_text(n_before)

    def heap_usage(self, cdp, gc: bool = True) -> int:
        """JS heap bytes in use (after forcing a major GC through CDP when ``gc``)."""
        if gc:
            cdp.send("HeapProfiler.collectGarbage")
            cdp.send("HeapProfiler.collectGarbage")
        return int(cdp.send("Runtime.getHeapUsage")["usedSize"])
