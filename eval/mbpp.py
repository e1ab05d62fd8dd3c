"""MBPP (3-shot, test split 11-510) pass@1 at fixed step budgets.

    python eval/mbpp.py --limit 20 --steps 16 32 --ar-baseline
    accelerate launch eval/mbpp.py --model runs/smollm2-135m-xdlm-lora/export --steps 16 32 64 256

Same options as `xdlm-tune eval` (see `--help`), with the benchmark fixed.
"""

import sys

from xdlm_tune.evaluation.entry import eval_main

if __name__ == "__main__":
    sys.exit(eval_main(benchmark="mbpp"))
