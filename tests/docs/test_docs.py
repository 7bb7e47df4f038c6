"""The documentation site: it builds strictly, the guides' Python blocks run, the public API is documented."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lmwidget

ROOT = Path(__file__).resolve().parents[2]
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
# A block that cannot run in the tests says so on the line before its fence:
#     <!-- docs-test: skip: needs a GPU -->
SKIP = re.compile(r"<!--\s*docs-test:\s*skip:\s*(?P<reason>\S.*?)\s*-->")
FENCE = re.compile(r"^```python\s*$")


def python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """The page's fenced ```python blocks as (line, code, reason to skip or None)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            start = i
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
            skip = SKIP.search(lines[start - 1]) if start else None
            blocks.append((start + 1, "\n".join(lines[start + 1:i]) + "\n", skip and skip["reason"]))
        i += 1
    return blocks


# Runs in a process of its own: each block in a fresh namespace and a fresh directory, then
# every run still training is stopped, so the next block starts on a quiet machine.
RUNNER = r'''
import json, os, sys, tempfile, traceback
import lmwidget

def settle():
    for run in lmwidget.runs():
        if run.state not in ("stopped", "finished", "failed", "closed"):
            run.stop()
        try:
            run.wait(timeout=60)
        except BaseException:
            pass

blocks = json.loads(sys.stdin.read())
failures = []
for where, code in blocks:
    with tempfile.TemporaryDirectory() as cwd:
        os.chdir(cwd)
        try:
            exec(compile(code, where, "exec"), {"__name__": "__main__"})
        except BaseException:
            failures.append(f"{where}:\n{traceback.format_exc()}")
        finally:
            settle()
            os.chdir(os.path.dirname(cwd))
print("DOCS-FAILURES " + json.dumps(failures))
'''


def test_guides_have_no_unmarked_fragments():
    marked = [(page.name, line, reason) for page in GUIDES for line, _, reason in python_blocks(page) if reason]
    for page, line, reason in marked:
        assert len(reason) > 10, f"{page}:{line}: a skipped block names why it cannot run here; got {reason!r}"
    runnable = sum(1 for page in GUIDES for _, _, reason in python_blocks(page) if reason is None)
    assert runnable >= 15, f"the guides' runnable Python blocks: {runnable}"


RUNNABLE = [p for p in GUIDES if any(reason is None for _, _, reason in python_blocks(p))]


@pytest.fixture(scope="module")
def guide_failures(tmp_path_factory) -> dict[str, list[str]]:
    """Run every guide's runnable blocks, page after page, in one process (one import of torch),
    each block in a fresh namespace and directory; returns each page's failures."""
    tmp = tmp_path_factory.mktemp("guides")
    blocks = [(f"{page.relative_to(ROOT)}:{line}", code) for page in RUNNABLE
              for line, code, reason in python_blocks(page) if reason is None]
    env = dict(os.environ, LMWIDGET_CACHE_DIR=str(tmp / "cache"), HOME=str(tmp),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), capture_output=True,
                          text=True, cwd=tmp, env=env, timeout=900)
    report = [line for line in done.stdout.splitlines() if line.startswith("DOCS-FAILURES ")]
    assert done.returncode == 0 and report, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    failures: dict[str, list[str]] = {}
    for failure in json.loads(report[-1].removeprefix("DOCS-FAILURES ")):
        failures.setdefault(failure.split(":", 1)[0], []).append(failure)
    return failures


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.stem)
def test_guide_code_runs(page, guide_failures):
    """Every Python block a user would copy from this guide runs, in page order."""
    failures = guide_failures.get(str(page.relative_to(ROOT)), [])
    assert not failures, "\n\n".join(failures)
    assert not any(ROOT.glob("lmwidget-checkpoints")), "a guide's block wrote into the repository"


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    """`mkdocs build --strict`: no broken link, no missing page, no docstring naming a parameter that is not there."""
    # mkdocs and mkdocstrings come with the test extra: missing, this fails rather than skips
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"), timeout=300)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    assert (tmp_path / "site" / "reference" / "public" / "index.html").is_file()


def public_definitions():
    """Every name in lmwidget.__all__ that is a function or class, and the public methods those classes define."""
    for name in lmwidget.__all__:
        obj = getattr(lmwidget, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        yield f"lmwidget.{name}", obj
        if inspect.isclass(obj) and obj.__module__.startswith("lmwidget"):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(member, property):
                    member = member.fget
                elif isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member):
                    yield f"lmwidget.{name}.{attr}", member


def test_public_api_has_docstrings():
    """Every function and class in lmwidget.__all__, and each public method and property of
    those classes, has a docstring: the API reference is made of them."""
    missing = [name for name, obj in public_definitions() if not inspect.getdoc(obj)]
    assert not missing, f"public definitions without a docstring: {missing}"


def coverage() -> tuple[int, int]:
    """(documented, all) public definitions: lmwidget.__all__'s functions and classes and their methods."""
    found = list(public_definitions())
    return sum(1 for _, obj in found if inspect.getdoc(obj)), len(found)




def test_public_functions_document_their_arguments():
    """The public functions of lmwidget.__all__ say what their arguments are (Google style `Args:`)."""
    lacking = []
    for name in sorted(lmwidget.__all__):
        obj = getattr(lmwidget, name)
        if inspect.isfunction(obj) and inspect.signature(obj).parameters:
            if "Args:" not in (inspect.getdoc(obj) or ""):
                lacking.append(name)
    assert not lacking, f"public functions whose docstring has no Args: section: {lacking}"


if __name__ == "__main__":
    print("public definitions with a docstring: %d / %d" % coverage())
