"""Export: merged weights + generated sampler code as a self-contained Hub folder, and the upload.

export_model(peft_model, tokenizer, "out", mask_id=..., k=0.1, shift=True, recipe=recipe)
push_to_hub("out", "me/my-xdlm")                  # token: $HF_TOKEN
export_run("runs/xdlm", "out")                    # a training run or checkpoint folder
load_export("out", lora={"r": 16})                # back into xdlm-tune as a diffusion base
"""

from xdlm_tune.export.entry import export_main, export_run
from xdlm_tune.export.export import ExportError, export_model, load_export, read_settings
from xdlm_tune.export.hub import PushError, push_to_hub
from xdlm_tune.export.modeling import MODEL_CLASS, MODELING_FILE, modeling_source

__all__ = [
    "MODELING_FILE",
    "MODEL_CLASS",
    "ExportError",
    "PushError",
    "export_main",
    "export_model",
    "export_run",
    "load_export",
    "modeling_source",
    "push_to_hub",
    "read_settings",
]
