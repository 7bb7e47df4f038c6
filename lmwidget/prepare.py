"""`python -m lmwidget.prepare DATA OUT_DIR ...`: tokenize a corpus into a token directory.

Only an entry point: the code is lmwidget.corpus (lmwidget.prepare is the function)."""

from .corpus import main

if __name__ == "__main__":
    main()
