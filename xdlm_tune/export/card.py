"""The model card (README.md) of an export: what the model is, how to use it, how it was made."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from xdlm_tune.config.field_help import field_help
from xdlm_tune.config.sampler import SamplerSettings, settings_of_export
from xdlm_tune.model.availability import EMBEDDED_HUB_IDS

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PAPER = "https://arxiv.org/abs/2602.01362"


def hub_id(name: str | None) -> str | None:
    """`name` as a Hub model id when it looks like one and is not a local path, else None."""
    if not name:
        return None
    name = EMBEDDED_HUB_IDS.get(name, name)
    return name if _HUB_ID.match(name) and not Path(name).expanduser().exists() else None


PLACEHOLDER = "<your-hub-id>"


def load_target(repo_id: str | None) -> tuple[str, str]:
    """What the card's snippets load: the Hub repo id when the export is pushed, else a placeholder
    (the card travels to the Hub: a local path would mean nothing there) and a comment saying so."""
    if repo_id:
        return repo_id, ""
    return PLACEHOLDER, (
        "  # the Hub repo id once pushed (e.g. you/my-xdlm-model); to load it locally, the export's folder"
    )


def objective_name(k: float) -> str:
    return "MDLM (absorbing noise)" if k == 0 else "UDLM (uniform noise)" if k == 1 else "XDLM"


def eval_table(summary: Any) -> str:
    """Markdown for `eval_summary`: a markdown string (kept as is: an evaluation's summary.md, written
    by the eval summary's own renderer, so the card reads as summary.md does), a list of row dicts,
    a dict of {row label: {column: value}}, or a flat dict of {metric: value}. (Export sits beside
    evaluation, so it never imports its renderer: callers hand over summary.md's text.)"""
    if summary is None:
        return ""
    if isinstance(summary, str):
        return summary.strip()
    if isinstance(summary, dict) and all(isinstance(v, dict) for v in summary.values()):
        rows = [{"": label, **values} for label, values in summary.items()]
    elif isinstance(summary, dict):
        rows = [{"metric": key, "value": value} for key, value in summary.items()]
    elif isinstance(summary, (list, tuple)) and all(isinstance(r, dict) for r in summary):
        rows = list(summary)
    else:
        raise TypeError("eval_summary must be markdown text, a list of dicts, or a dict")
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):  # e.g. outcome counts: "passed 1, error 2", never a Python dict
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    if isinstance(value, dict):  # e.g. counts per status: "passed 1, error 2", not a Python dict
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def recipe_yaml(recipe: dict | None) -> str:
    if not recipe:
        return ""
    return yaml.safe_dump(recipe, sort_keys=False, default_flow_style=False).strip()


def settings_table(settings: SamplerSettings) -> str:
    """A markdown table of every sampler setting: its value here and its meaning (SamplerSettings' own help)."""
    helps = field_help(SamplerSettings)
    rows = [f"| `{name}` | `{json.dumps(value)}` | {helps[name]} |" for name, value in settings.to_dict().items()]
    return "| setting | value | what |\n|---|---|---|\n" + "\n".join(rows)


def model_card(
    *,
    name: str,
    base_model: str,
    training_data: str,
    settings: dict,
    architecture: str,
    dtype: str,
    eval_summary: Any = None,
    plot_file: str | None = None,
    repo_id: str | None = None,
) -> str:
    """The README.md text, titled `name`. `settings` is the config's `xdlm` block. The loading
    snippets name `repo_id` (the Hub repo it is pushed to), else a placeholder with a note."""
    sampler = settings_of_export(settings)
    k = sampler.k
    meta: dict[str, Any] = {"library_name": "transformers"}
    if hub_id(base_model):
        meta["base_model"] = hub_id(base_model)
    meta.update(
        pipeline_tag="text-generation", tags=["xdlm", "discrete-diffusion", "diffusion-language-model", "xdlm-tune"]
    )
    mask = (
        f"`{settings['mask_token']}` (id {settings['mask_id']})"
        if settings.get("mask_token")
        else f"id {settings['mask_id']}"
    )
    shift = (
        "yes: the output at position i - 1 predicts token i" if settings["shift"] else "no: position i predicts token i"
    )
    repo, repo_note = load_target(repo_id)
    base_link = (
        f"[{hub_id(base_model)}](https://huggingface.co/{hub_id(base_model)})"
        if hub_id(base_model)
        else f"`{base_model}`"
    )
    parts = [
        "---\n" + yaml.safe_dump(meta, sort_keys=False).strip() + "\n---",
        f"# {name}",
        f"A discrete-diffusion language model ({objective_name(k)}, mixing ratio k = {k}) made from {base_link} "
        "with xdlm-tune. It does not write left to right: it starts from masked (and, for k > 0, "
        "random) tokens and denoises the whole answer in a fixed number of parallel steps. Any "
        "LoRA adapters and the trained mask-token embedding row are merged into the weights, "
        f"and attention is bidirectional. XDLM: [Balancing Understanding and Generation in Discrete Diffusion Models]({PAPER}).",
        "| | |\n|---|---|\n"
        f"| Base model | {base_link} |\n"
        f"| Objective | {objective_name(k)}, k = {k} (0 = MDLM, absorbing; 1 = UDLM, uniform) |\n"
        f"| Noise schedule | {sampler.schedule}, eps = {sampler.eps} |\n"
        f"| Mask token | {mask} |\n"
        f"| Shift | {shift} |\n"
        f"| Training data | {training_data} |\n"
        f"| Architecture | {architecture}, bidirectional (`is_causal: false`), {dtype} |",
        "## Usage\n\nPlain transformers (`trust_remote_code=True` loads `modeling_xdlm.py`, the sampler code of "
        "xdlm-tune, generated from its source):\n\n```python\n"
        "from transformers import AutoModel, AutoTokenizer\n\n"
        f"repo = {repo!r}{repo_note}\n"
        "tokenizer = AutoTokenizer.from_pretrained(repo)\n"
        "model = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()\n"
        'inputs = tokenizer(["def fibonacci(n):"], return_tensors="pt")\n'
        "out = model.diffusion_generate(\n"
        "    inputs.input_ids, attention_mask=inputs.attention_mask,\n"
        f"    max_new_tokens={sampler.gen_length}, steps={sampler.steps}, "
        f"block_length={sampler.block_length or sampler.gen_length},\n"
        f'    temperature={sampler.temperature}, alg="{sampler.resolved_sampler}",  # the stored settings, as keywords\n'
        ")\n"
        "print(tokenizer.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True))\n```\n\n"
        "`diffusion_generate(input_ids, attention_mask=None, *, eos_token_id=None, generator=None, **overrides)` "
        "returns the full sequences (prompt as given + answer, so the answer is `out[:, input_ids.shape[1]:]`), as "
        "Dream's models do; the tokenizer pads on the left, and a batch padded on the right is left-aligned inside "
        "(each row gives what its prompt alone gives). `model.generate()` is refused: this model does not write left "
        "to right. It samples with the settings below (`config.json`, `xdlm.sampler`); any of them can be given as a "
        "keyword, e.g. `diffusion_generate(ids, steps=64, temperature=0.7)`, and `max_new_tokens` / `alg` are "
        "accepted for `gen_length` / `sampler` (Dream's names).",
        "## Sampler settings\n\n" + settings_table(sampler),
    ]
    table = eval_table(eval_summary)
    if table or plot_file:
        section = "## Evaluation"
        if table:
            section += "\n\n" + table
        if plot_file:
            section += f"\n\n![evaluation]({plot_file})"
        parts.append(section)
    recipe = recipe_yaml(settings.get("recipe"))
    if recipe:
        parts.append(
            "## Training recipe\n\nThe resolved xdlm-tune recipe (also in `config.json` under "
            f"`xdlm.recipe`):\n\n```yaml\n{recipe}\n```"
        )
    parts.append(
        "## Further training\n\nThe export loads back into xdlm-tune as a diffusion base (mask id and shift are read "
        "from `config.json`):\n\n```yaml\nmodel:\n"
        f"  name_or_path: {repo}{repo_note}\n  kind: diffusion\n  trust_remote_code: true\n```"
    )
    return "\n\n".join(parts) + "\n"
