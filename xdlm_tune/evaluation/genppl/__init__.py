"""Generation quality where pass@1 cannot see yet: gen-PPL, entropy and compile rate (metrics.py), the
recipe's `genppl` task (task.py) and `xdlm-tune eval --benchmark genppl` (entry.py)."""
