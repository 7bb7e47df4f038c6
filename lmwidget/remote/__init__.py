"""Jobs: a run in another process, its command line, and attaching to it from a notebook."""
