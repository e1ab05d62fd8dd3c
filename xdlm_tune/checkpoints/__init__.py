"""Checkpoints on disk: the protocol (names, atomic commit, keep-last-N, recovery: protocol.py) and a
training run read back as a model (load.py), for eval, export and `xdlm-tune run`."""
