"""`python -m xdlm_tune.train RECIPE [overrides]`: the module accelerate / torchrun launch."""

import sys

from .entry import main

sys.exit(main())
