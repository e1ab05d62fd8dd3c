"""``python -m xdlm_tune.lm_eval ...`` = ``xdlm-tune lm-eval ...`` (also under ``accelerate launch -m``)."""

import sys

from .entry import main

sys.exit(main())
