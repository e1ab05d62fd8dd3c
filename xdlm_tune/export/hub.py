"""Upload an export folder to the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, get_token

from xdlm_tune.export.export import ExportError, read_settings
from xdlm_tune.export.modeling import MODELING_FILE

TOKEN_HELP = "set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens) or run `hf auth login`"


class PushError(ExportError):
    """The upload failed; the local export is untouched."""


def push_to_hub(out_dir: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Create `repo_id` (if needed) and upload the export folder; returns the repo's URL.

    The token is `token`, else $HF_TOKEN, else the one `hf auth login` stored. $HF_ENDPOINT selects
    another Hub. Nothing local is changed: on any failure the export stays as it was and the
    error says how to retry.
    """
    out_dir = Path(out_dir)
    read_settings(out_dir)  # refuse folders that are not exports before touching the network
    if not (out_dir / MODELING_FILE).is_file():
        raise ExportError(f"{out_dir} lacks {MODELING_FILE}; export it again")
    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise PushError(
            f"cannot push {out_dir} to {repo_id}: no Hugging Face token; {TOKEN_HELP}. "
            f"The export in {out_dir} is complete and can be pushed later."
        )
    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token)
    where = endpoint or "https://huggingface.co"
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=out_dir,
            repo_type="model",
            commit_message="Upload XDLM model exported by xdlm-tune",
        )
    except Exception as err:  # network, auth, quota ...: one clear message, the cause chained
        raise PushError(
            f"could not upload {out_dir} to {repo_id} on {where}: {type(err).__name__}: {err}\n"
            f"The export in {out_dir} is intact. Check the network and the token ({TOKEN_HELP}), then retry "
            f"with `hf upload {repo_id} {out_dir}` or `xdlm-tune export ... --push-to-hub {repo_id}`."
        ) from err
    return str(url)
