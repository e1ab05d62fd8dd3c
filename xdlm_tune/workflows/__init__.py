"""What chains the stages: `xdlm-tune run` (pipeline.py: train -> eval -> export -> sample), the sweep over k
(sweep.py), the demos (demo.py, core_demo.py) and what a rerun may reuse (reuse.py)."""
