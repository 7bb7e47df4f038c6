"""`python -m lmwidget.train ...`: the command-line trainer (see lmwidget.cli).

Only an entry point: import lmwidget.cli, not this module (lmwidget.train is the function)."""

import sys

from lmwidget.cli import main

if __name__ == "__main__":
    sys.exit(main())
