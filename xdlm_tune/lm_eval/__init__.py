"""lm-evaluation-harness for xdlm-tune: the model ``xdlm`` (model.py), the offline tasks (tasks/: ``mbpp_local``,
``pydocs_mc``, ``pydocs_ppl``) and ``xdlm-tune lm-eval`` (entry.py).

``import xdlm_tune.lm_eval`` registers ``xdlm`` with lm-eval, so ``lm_eval.simple_evaluate(model="xdlm", ...)``
works after it (lm-eval is the ``eval`` extra).
"""

from .model import XDLMLM, LocalDataError, ModelArgError

__all__ = ["XDLMLM", "LocalDataError", "ModelArgError"]
