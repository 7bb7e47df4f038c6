"""lmwidget's own training: the config, the optimizer, the built-in loop, Run, and distributed ranks."""
