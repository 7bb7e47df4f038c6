"""`python -m lmwidget COMMAND ...`: train a job, prepare a token directory, or benchmark.

    python -m lmwidget train --model gpt --steps 5000 --run-dir runs/a    (also under torchrun)
    python -m lmwidget prepare corpus/ corpus-bpe --tokenizer bpe
    python -m lmwidget bench
"""

from __future__ import annotations

import sys

from .bench.overhead import main as bench
from .data.corpus import main as prepare
from .remote.cli import main as train

COMMANDS = {
    "train": (train, "train a job that a notebook attaches to (also under torchrun)"),
    "prepare": (prepare, "tokenize a corpus once into a token directory"),
    "bench": (bench, "measure what the dashboard costs a training step"),
}


def main(argv: list[str] | None = None) -> int:
    """Run one of lmwidget's commands: `train`, `prepare` or `bench`.

    Args:
        argv: the command and its arguments (default: `sys.argv[1:]`).

    Returns:
        The exit status: 0 on success, 2 for a command that is not one of lmwidget's.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (f"usage: python -m lmwidget {{{','.join(COMMANDS)}}} ...\n\n"
             + "\n".join(f"  {name:<8} {what}" for name, (_, what) in COMMANDS.items()) + "\n")
    if argv[:1] in (["-h"], ["--help"]):
        sys.stdout.write(usage)
        return 0
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "no command given"
        sys.stderr.write(f"python -m lmwidget: {given}; one of: {', '.join(COMMANDS)}\n\n{usage}")
        return 2
    run, _ = COMMANDS[argv[0]]
    return run(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
