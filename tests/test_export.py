"""Export: merged Hub folders that plain transformers loads (in a process without xdlm-tune), the
generated modeling file, the model card, the Hub upload's errors, reloading for training, runs."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
from checkpoint_writer import save_checkpoint
from safetensors.torch import load_file, save_file
from tiny_models import random_ids, tiny_model, tiny_tokenizer

import xdlm_tune.export.hub as hub
import xdlm_tune.export.modeling as modeling
from xdlm_tune.config import load_recipe
from xdlm_tune.export import (
    MODELING_FILE,
    ExportError,
    PushError,
    export_main,
    export_model,
    load_export,
    push_to_hub,
    read_settings,
)
from xdlm_tune.export.modeling import base_class_name, modeling_source
from xdlm_tune.model import (
    attach_lora,
    denoiser_hidden,
    make_bidirectional,
    output_projection,
    prepare_model,
    setup_mask_token,
    unwrap,
)
from xdlm_tune.sampling import generate
from xdlm_tune.train.state import TrainState

K = 0.3
STEPS, GEN, BLOCK = 4, 8, 4
ALGS = ("confidence", "xdlm", "ancestral")
# family -> (shift, tokenizer): an added mask token that grows the vocabulary (untied head),
# an added one on a spare row (tied head), a reused reserved token (softcap, eager, sliding window).
CASES = {
    "llama": (True, dict(vocab_size=128)),
    "qwen2": (False, dict()),
    "gemma2": (True, dict(reserved=True)),
}
EVAL = {
    "XDLM k=0.3": {"mbpp pass@1 (32 steps)": 0.15, "mbpp pass@1 (64 steps)": 0.2},
    "base": {"mbpp pass@1 (32 steps)": 0.07},
}


def trained(family: str, shift: bool, seed: int = 0, **tok_kwargs):
    """A tiny bidirectional LoRA denoiser whose adapters and mask row are no longer at their init."""
    model = make_bidirectional(tiny_model(family))
    tok = tiny_tokenizer(**tok_kwargs)
    mask_id = setup_mask_token(model, tok)
    model.config.xdlm_shift = shift
    torch.manual_seed(seed)
    model = attach_lora(model, r=4, alpha=8, mask_id=mask_id)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval(), tok, mask_id


def inputs(mask_id: int):
    ids = random_ids(2, 9, seed=1)
    ids[:, 4] = mask_id
    attn = torch.ones_like(ids)
    attn[1, :3] = 0  # left padding
    prompts = random_ids(2, 5, seed=2)
    prompt_mask = torch.ones_like(prompts)
    prompt_mask[1, :2] = 0
    return ids, attn, prompts, prompt_mask


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# Cached / threshold variants of diffusion_generate, checked against the project's generate.
CACHED = {
    "xdlm_dual": dict(alg="xdlm", cache="dual", revise_prompt=True),
    "confidence_prefix_tau": dict(alg="confidence", cache="prefix", refresh_every=2, threshold=0.05),
}

CHILD = r"""
import importlib.util, json, sys
sys.path.extend(sys.argv[1].split(":"))  # site-packages only: no .pth hooks, so no editable xdlm_tune
assert importlib.util.find_spec("xdlm_tune") is None, "xdlm_tune is importable in the clean process"
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

results = {}
for case in json.loads(sys.argv[2]):
    data = torch.load(case["inputs"], weights_only=True)
    res = {}
    for auto in (AutoModel, AutoModelForCausalLM):
        model = auto.from_pretrained(case["dir"], trust_remote_code=True).eval()
        with torch.no_grad():
            res[auto.__name__ + ".logits"] = model(input_ids=data["ids"], attention_mask=data["attn"]).logits
            edited = data["ids"][:1].clone()
            edited[0, -1] = (edited[0, -1] + 1) % 100
            first = [model(input_ids=x).logits[0, 0] for x in (data["ids"][:1], edited)]
        res[auto.__name__ + ".bidirectional"] = torch.tensor(not torch.equal(*first))
        res[auto.__name__ + ".class"] = type(model).__module__ + "." + type(model).__name__
    for alg in case["algs"]:
        res["gen." + alg] = model.diffusion_generate(
            data["prompts"], attention_mask=data["prompt_mask"], max_new_tokens=case["gen"], steps=case["steps"],
            block_length=case["block"], temperature=0.0, alg=alg)
    res["gen.defaults"] = model.diffusion_generate(data["prompts"], attention_mask=data["prompt_mask"])
    res["gen.xdlm_revise"] = model.diffusion_generate(
        data["prompts"], attention_mask=data["prompt_mask"], max_new_tokens=case["gen"], steps=case["steps"],
        block_length=case["block"], temperature=0.0, alg="xdlm", revise_prompt=True)
    for name in case["cached"]:
        kw = CACHED[name]
        res["gen." + name] = model.diffusion_generate(
            data["prompts"], attention_mask=data["prompt_mask"], max_new_tokens=case["gen"], steps=case["steps"],
            block_length=case["block"], temperature=0.0, **kw)
    tok = AutoTokenizer.from_pretrained(case["dir"])
    res["tokenizer.padding_side"] = tok.padding_side
    gen_kw = dict(max_new_tokens=case["gen"], steps=case["steps"], block_length=case["block"], temperature=0.0,
                  alg="xdlm")
    for side in ("left", "right"):  # a padded batch, as the tokenizer pads it, against each prompt alone
        tok.padding_side = side
        enc = tok(case["texts"], return_tensors="pt", padding=True)
        out = model.diffusion_generate(enc.input_ids, attention_mask=enc.attention_mask, **gen_kw)
        res[f"pad.{side}.prompt_kept"] = torch.tensor(torch.equal(out[:, : enc.input_ids.shape[1]], enc.input_ids))
        res[f"pad.{side}.batch"] = out[:, enc.input_ids.shape[1]:]
        alone = [tok([t], return_tensors="pt").input_ids for t in case["texts"]]
        res[f"pad.{side}.alone"] = torch.cat([model.diffusion_generate(a, **gen_kw)[:, a.shape[1]:] for a in alone])
    try:
        model.generate(enc.input_ids, max_new_tokens=2)
        res["generate"] = "ran"
    except NotImplementedError as err:
        res["generate"] = str(err)
    res["xdlm_tune_loaded"] = torch.tensor(any(m.split(".")[0] == "xdlm_tune" for m in sys.modules))
    results[case["name"]] = res
torch.save({k: {n: v for n, v in r.items() if isinstance(v, torch.Tensor)} for k, r in results.items()}, sys.argv[3])
print(json.dumps({k: {n: v for n, v in r.items() if isinstance(v, str)} for k, r in results.items()}))
"""


def run_clean(tmp: Path, cases: list[dict]) -> tuple[dict, dict]:
    """Run CHILD in `python -I -S` with only site-packages on sys.path, from a folder outside the repo."""
    site = ":".join(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    script, out = tmp / "child.py", tmp / "child_results.pt"
    script.write_text(f"CACHED = {CACHED!r}\n" + CHILD)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "HF_HOME": str(tmp / "hf"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(script), site, json.dumps(cases), str(out)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True), json.loads(proc.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each family trained, exported, and loaded back in one clean subprocess."""
    tmp = tmp_path_factory.mktemp("export")
    recipe = load_recipe(
        None,
        [
            f"diffusion.k={K}",
            "data.source=python-stdlib",
            "eval.steps=[4]",
            "eval.gen_length=8",
            "eval.block_length=4",
            "eval.sampler=confidence",
        ],
    )
    (tmp / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n fake plot")
    ref, cases = {}, []
    for family, (shift, tok_kwargs) in CASES.items():
        model, tok, mask_id = trained(family, shift, **tok_kwargs)
        ids, attn, prompts, prompt_mask = inputs(mask_id)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attn).logits
        out = export_model(
            model,
            tok,
            tmp / family,
            mask_id=mask_id,
            k=K,
            shift=shift,
            recipe=recipe,
            eval_summary=EVAL,
            plot_path=tmp / "plot.png",
            base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
            training_data="the Python standard library (pretrain)",
            generation={"alg": "xdlm"},
        )
        with torch.no_grad():  # the caller's LoRA model is untouched
            assert torch.equal(model(input_ids=ids, attention_mask=attn).logits, logits)
        kw = dict(mask_id=mask_id, shift=shift, k=K, attention_mask=prompt_mask, temperature=0.0)
        gens = {
            alg: generate(model, prompts, steps=STEPS, gen_length=GEN, block_length=BLOCK, sampler=alg, **kw)
            for alg in ALGS
        }
        gens["defaults"] = generate(model, prompts, steps=4, gen_length=8, block_length=4, sampler="xdlm", **kw)
        gens["xdlm_revise"] = generate(
            model, prompts, steps=STEPS, gen_length=GEN, block_length=BLOCK, sampler="xdlm", revise_prompt=True, **kw
        )
        cached = [] if family == "gemma2" else list(CACHED)  # gemma2's sliding window is refused by the cache
        for name in cached:
            extra = dict(CACHED[name])
            gens[name] = generate(
                model, prompts, steps=STEPS, gen_length=GEN, block_length=BLOCK, sampler=extra.pop("alg"), **extra, **kw
            )
        ref[family] = dict(model=model, tok=tok, mask_id=mask_id, shift=shift, logits=logits, gens=gens, dir=out)
        torch.save(dict(ids=ids, attn=attn, prompts=prompts, prompt_mask=prompt_mask), tmp / f"{family}.pt")
        cases.append(
            dict(
                name=family,
                dir=str(out),
                inputs=str(tmp / f"{family}.pt"),
                algs=ALGS,
                gen=GEN,
                steps=STEPS,
                block=BLOCK,
                cached=cached,
                texts=["w5 w17 w30 w8 w44 w9 w61", "w12 w7 w90", "w33 w3 w71 w26 w15"],
            )
        )
    t0 = time.perf_counter()
    tensors, classes = run_clean(tmp, cases)
    return dict(ref=ref, child=tensors, classes=classes, tmp=tmp, recipe=recipe, child_s=time.perf_counter() - t0)


# --------------------------------------------------------------------------- plain transformers


@pytest.mark.parametrize("family", CASES)
def test_clean_process_loads_the_export_bidirectional(exported, family):
    res, classes = exported["child"][family], exported["classes"][family]
    assert not bool(res["xdlm_tune_loaded"])
    for auto in ("AutoModel", "AutoModelForCausalLM"):
        assert classes[auto + ".class"].startswith("transformers_modules.")
        assert classes[auto + ".class"].endswith("modeling_xdlm.XDLMForCausalLM")
        assert bool(res[auto + ".bidirectional"])


@pytest.mark.parametrize("family", CASES)
def test_exported_logits_equal_the_trained_lora_model(exported, family):
    ref, res = exported["ref"][family], exported["child"][family]
    for auto in ("AutoModel", "AutoModelForCausalLM"):
        torch.testing.assert_close(res[auto + ".logits"], ref["logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", CASES)
def test_diffusion_generate_gives_the_tokens_of_xdlm_tune_sampler(exported, family):
    ref, res = exported["ref"][family], exported["child"][family]
    for alg in (*ALGS, "defaults", "xdlm_revise", *(CACHED if family != "gemma2" else ())):
        assert torch.equal(res["gen." + alg], ref["gens"][alg]), alg
        assert not (res["gen." + alg][:, 5:] == ref["mask_id"]).any()
    if family != "gemma2":  # the cache was used: its tokens differ from the uncached sampler's here
        assert not torch.equal(ref["gens"]["xdlm_dual"], ref["gens"]["xdlm_revise"])


@pytest.mark.parametrize("family", CASES)
def test_padded_batch_through_the_plain_transformers_export_equals_each_prompt_alone(exported, family):
    """AutoTokenizer pads the export's way (left); a batch padded on either side gives each row the
    tokens of its prompt alone, the prompts come back as given, and `generate()` is refused."""
    res, strings = exported["child"][family], exported["classes"][family]
    assert strings["tokenizer.padding_side"] == "left"
    for side in ("left", "right"):
        assert bool(res[f"pad.{side}.prompt_kept"]), side
        assert torch.equal(res[f"pad.{side}.batch"], res[f"pad.{side}.alone"]), side
    assert "diffusion_generate" in strings["generate"]


@pytest.mark.parametrize("family", CASES)
def test_mask_row_survives_the_merge(exported, family):
    ref = exported["ref"][family]
    state = {}
    for f in ref["dir"].glob("*.safetensors"):
        state.update(load_file(f))
    hf, m = unwrap(ref["model"]), ref["mask_id"]
    base_rows = hf.get_input_embeddings().token_adapter.base_layer.weight
    trained_rows = hf.get_input_embeddings().weight  # PEFT substitutes the trained mask row
    assert not torch.equal(trained_rows[m], base_rows[m])
    torch.testing.assert_close(state["model.embed_tokens.weight"][m], trained_rows[m], atol=0, rtol=0)
    if "lm_head.weight" in state:  # untied head: its own trained row
        torch.testing.assert_close(state["lm_head.weight"][m], hf.get_output_embeddings().weight[m], atol=0, rtol=0)
    settings = read_settings(ref["dir"])
    assert settings["mask_id"] == m and settings["shift"] == ref["shift"] and settings["sampler"]["k"] == K
    config = json.loads((ref["dir"] / "config.json").read_text())
    assert config["is_causal"] is False and config["mask_token_id"] == m
    assert config["auto_map"] == {
        "AutoModel": "modeling_xdlm.XDLMForCausalLM",
        "AutoModelForCausalLM": "modeling_xdlm.XDLMForCausalLM",
    }
    mask_token = ref["tok"].convert_ids_to_tokens(m)  # <|mask|> added, or a reserved token reused
    assert json.loads((ref["dir"] / "tokenizer_config.json").read_text())["mask_token"] == mask_token
    assert settings["mask_token"] == mask_token


def test_model_card(exported):
    out = exported["ref"]["llama"]["dir"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n")
    assert "(XDLM, mixing ratio k = 0.3)" in card and "| Objective | XDLM, k = 0.3" in card
    assert "| Training data | the Python standard library (pretrain) |" in card
    assert f"`<|mask|>` (id {exported['ref']['llama']['mask_id']})" in card
    assert "|  | mbpp pass@1 (32 steps) | mbpp pass@1 (64 steps) |\n|---|---|---|" in card
    assert "| XDLM k=0.3 | 0.15 | 0.2 |" in card and "| base | 0.07 |  |" in card
    assert "![evaluation](eval_plot.png)" in card and (out / "eval_plot.png").is_file()
    assert "```yaml\nmodel:\n  name_or_path: smollm2-135m" in card and "diffusion:\n  k: 0.3" in card
    assert 'alg="xdlm"' in card and "trust_remote_code=True" in card
    assert read_settings(out)["recipe"] == exported["recipe"].to_dict()
    assert read_settings(out)["sampler"] == {  # issue #25: the settings whole (format 2), k / schedule / eps too
        "sampler": "xdlm",
        "gen_length": 8,
        "steps": 4,
        "block_length": 4,
        "temperature": 0.0,
        "top_p": 1.0,
        "revise_prompt": False,
        "final_step": "none",
        "cache": "none",
        "refresh": "step",
        "refresh_every": None,
        "threshold": None,
        "k": K,
        "schedule": "linear",
        "eps": 1e-3,
    }


# --------------------------------------------------------------------------- the generated modeling file


@pytest.mark.parametrize("family", CASES)
def test_modeling_file_regenerates_byte_for_byte(exported, family):
    ref = exported["ref"][family]
    assert (ref["dir"] / MODELING_FILE).read_bytes() == modeling_source(base_class_name(unwrap(ref["model"]))).encode()


def test_generated_code_is_the_projects_own():
    text = modeling_source("LlamaForCausalLM")
    generated = {
        n.name if hasattr(n, "name") else ast.unparse(n.targets[0]): ast.get_source_segment(text, n)
        for n in ast.parse(text).body
        if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign))
    }
    expected = {}
    for rel in modeling.SOURCES:
        source = (modeling._PACKAGE / rel).read_text()
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign)):
                name = node.name if hasattr(node, "name") else ast.unparse(node.targets[0])
                expected[name] = ast.get_source_segment(source, node)
    assert generated == expected  # same names, same text: nothing added, dropped or edited
    assert {
        "generate",
        "reverse_posterior",
        "make_schedule",
        "SamplerSettings",
        "_revision_quota",
        "XDLMForCausalLM",
    } <= set(generated)
    assert "from transformers import LlamaForCausalLM as _XDLMBase" in text
    assert "xdlm_tune" not in "".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert text == modeling_source("LlamaForCausalLM")


def test_generated_file_needs_only_torch_and_transformers(tmp_path):
    from transformers.dynamic_module_utils import get_imports, get_relative_imports

    path = tmp_path / MODELING_FILE
    path.write_text(modeling_source("Qwen3ForCausalLM"))
    assert set(get_imports(path)) <= {"__future__", "inspect", "math", "typing", "dataclasses", "torch", "transformers"}
    assert get_relative_imports(path) == []


def test_generator_refuses_a_project_import_it_cannot_satisfy(monkeypatch):
    monkeypatch.setattr(modeling, "SOURCES", tuple(s for s in modeling.SOURCES if s != "diffusion/posterior.py"))
    with pytest.raises(ValueError, match=r"sampling/generate.py imports \['reverse_posterior'\]"):
        modeling_source("LlamaForCausalLM")


# --------------------------------------------------------------------------- the Hub


def test_push_without_a_token_is_a_clear_error(exported, monkeypatch):
    out = exported["ref"]["qwen2"]["dir"]
    before = tree_digest(out)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(PushError, match="no Hugging Face token; set HF_TOKEN"):
        push_to_hub(out, "someone/tiny-xdlm")
    assert tree_digest(out) == before


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_without_network_is_a_clear_error_and_keeps_the_export(exported, monkeypatch):
    out = exported["ref"]["qwen2"]["dir"]
    before = tree_digest(out)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    t0 = time.perf_counter()
    with pytest.raises(
        PushError, match=r"(?s)could not upload .* to someone/tiny-xdlm on http://127\.0\.0\.1:\d+.*is intact"
    ):
        push_to_hub(out, "someone/tiny-xdlm", private=True)
    assert time.perf_counter() - t0 < 30
    assert tree_digest(out) == before


def test_push_refuses_a_folder_that_is_not_an_export(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ExportError, match="no `xdlm` block"):
        push_to_hub(tmp_path, "someone/x", token="hf_x")


# --------------------------------------------------------------------------- back into xdlm-tune


def test_export_loads_back_as_a_diffusion_base_for_training(exported):
    ref = exported["ref"]["llama"]
    prepared = load_export(ref["dir"], lora={"r": 4, "alpha": 8})
    assert prepared.kind == "diffusion" and prepared.mask_id == ref["mask_id"] and prepared.shift is True
    model = prepared.model
    ids, attn, _, _ = inputs(prepared.mask_id)
    weight, bias, softcap = output_projection(model)
    logits = denoiser_hidden(model, ids, attn, shift=False) @ weight.T
    with torch.no_grad():
        trained_logits = ref["model"](
            input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)
        ).logits
    torch.testing.assert_close(logits, trained_logits, atol=1e-4, rtol=1e-4)  # the new LoRA starts at zero
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    logits.logsumexp(-1).mean().backward()
    opt.step()
    # The generic path a recipe takes (model.kind: diffusion) finds the same mask id and shift.
    plain = prepare_model(ref["dir"], kind="diffusion", trust_remote_code=True)
    assert (plain.mask_id, plain.shift) == (ref["mask_id"], True)
    # ... and the further-trained model exports again, with the same generated code.
    again = export_model(
        model, prepared.tokenizer, exported["tmp"] / "again", mask_id=prepared.mask_id, k=K, shift=True
    )
    assert (again / MODELING_FILE).read_text() == modeling_source("LlamaForCausalLM")
    reloaded = load_export(again).model
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_refuses_to_overwrite_other_folders_and_replaces_an_old_export(tmp_path):
    model, tok, mask_id = trained("qwen3", True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an xdlm-tune export"):
        export_model(model, tok, tmp_path / "notes", mask_id=mask_id, k=K, shift=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="differs from the recipe's diffusion.k"):
        export_model(model, tok, tmp_path / "out", mask_id=mask_id, k=0.5, shift=True, recipe={"diffusion": {"k": 0.1}})
    for k in (0.1, 0.2):
        export_model(model, tok, tmp_path / "out", mask_id=mask_id, k=k, shift=True, max_shard_size="20KB")
    assert read_settings(tmp_path / "out")["sampler"]["k"] == 0.2
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 1  # sharded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "out"]  # no temporary folders left


def test_qlora_export_merges_into_the_unquantised_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    base = tmp_path / "base"
    tiny_model("llama", hidden_size=64, intermediate_size=128, head_dim=16).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    qlora = prepare_model(base, quantization="nf4", lora={"r": 4})
    full = prepare_model(base, lora={"r": 4})  # the same base, unquantised, for reference
    with torch.no_grad():
        for p in qlora.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    state = {k: v for k, v in qlora.model.state_dict().items() if "lora_" in k or "trainable_tokens_delta" in k}
    full.model.load_state_dict(state, strict=False)
    out = export_model(qlora.model, qlora.tokenizer, tmp_path / "out", mask_id=qlora.mask_id, k=K, shift=True)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    exported = prepare_model(out, kind="diffusion", trust_remote_code=True).model
    ids, attn, _, _ = inputs(qlora.mask_id)
    with torch.no_grad():
        torch.testing.assert_close(
            exported(input_ids=ids, attention_mask=attn).logits,
            full.model.eval()(input_ids=ids, attention_mask=attn).logits,
            atol=1e-4,
            rtol=1e-4,
        )


# --------------------------------------------------------------------------- runs and checkpoints


def training_run(tmp_path: Path, saved_as: str = "adapter"):
    """A saved training run (one checkpoint, step 3) of a tiny llama: (recipe, prepared, trained model)."""
    base = tmp_path / "base"
    tiny = tiny_model("llama")
    tiny.config._model_name_or_path = "Smollm2 135M 8k Lc100K Mix1 Ep2"  # what the GGUF conversion leaves
    tiny.save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    recipe = load_recipe(
        None,
        [
            f"model.name_or_path={base}",
            "lora.r=4",
            "lora.alpha=8",
            f"diffusion.k={K}",
            f"training.output_dir={tmp_path / 'run'}",
            f"lora.enabled={saved_as != 'model'}",
        ],
    )
    prepared = prepare_model(base, lora=recipe.lora.to_dict())
    model = prepared.model
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()

    def write(d: Path) -> None:
        save_file(
            {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
            d / "trainable.safetensors",
        )  # the resume-only file, which export ignores
        if saved_as == "adapter":
            model.save_pretrained(d / "adapter", save_embedding_layers=False)
            prepared.tokenizer.save_pretrained(d / "adapter")
        elif saved_as == "model":
            model.save_pretrained(d / "model")
            prepared.tokenizer.save_pretrained(d / "model")
        else:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "model.safetensors")

    save_checkpoint(tmp_path / "run", 3, keep_last=2, state=TrainState(step=3), recipe=recipe, write=write)
    return recipe, prepared, model


@pytest.mark.parametrize("saved_as", ["adapter", "model", "state_dict"])
def test_export_main_from_a_training_run(tmp_path, saved_as, monkeypatch, capsys):
    """The checkpoint layouts of xdlm_tune/train/state.py: adapter/ (LoRA), model/ (full fine-tune),
    and a bare state dict."""
    recipe, prepared, model = training_run(tmp_path, saved_as)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    rc = export_main([str(tmp_path / "run"), "--push-to-hub", "someone/tiny-xdlm"])
    err = capsys.readouterr().err
    assert rc == 1 and "is intact" in err  # the push failed; the export is there
    out = tmp_path / "run" / "export"
    settings = read_settings(out)
    assert settings["sampler"]["k"] == K and settings["mask_id"] == prepared.mask_id and settings["shift"] is True
    assert settings["recipe"] == recipe.to_dict()
    assert "# someone/tiny-xdlm" in (out / "README.md").read_text()
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(out).eval()  # no remote code: the family's own class
    assert plain.config.is_causal is False
    ids, attn, _, _ = inputs(prepared.mask_id)
    with torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=ids, attention_mask=attn).logits,
            model(input_ids=ids, attention_mask=attn).logits,
            atol=1e-4,
            rtol=1e-4,
        )


def test_export_main_errors(tmp_path, capsys):
    assert export_main([str(tmp_path)]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_card_snippets_load_the_hub_repo_when_pushed_else_a_placeholder(tmp_path):
    from xdlm_tune.export.card import model_card

    settings = {
        "k": 0.1,
        "mask_id": 7,
        "mask_token": "<|mask|>",
        "shift": True,
        "schedule": "linear",
        "eps": 1e-3,
        "generation": {
            "alg": "confidence",
            "max_new_tokens": 8,
            "steps": 4,
            "block_length": 8,
            "temperature": 0.0,
            "top_p": 1.0,
        },
    }
    common = dict(
        base_model="smollm2-135m",
        training_data="x",
        settings=settings,
        architecture="LlamaForCausalLM",
        dtype="float32",
    )
    pushed = model_card(name="you/mine", repo_id="you/mine", **common)
    assert "repo = 'you/mine'\n" in pushed and "name_or_path: you/mine\n" in pushed
    assert str(tmp_path) not in pushed
    local = model_card(name="<your-hub-id>", **common)
    assert "repo = '<your-hub-id>'  # the Hub repo id once pushed" in local
    assert "name_or_path: <your-hub-id>  # the Hub repo id once pushed" in local
    assert str(tmp_path) not in local  # the card goes to the Hub: a local path means nothing there


def test_export_card_renders_a_real_eval_summary_as_summary_md(tmp_path, capsys):
    """The card's evaluation table from summary.json is summary.md's table (the eval summary's one
    renderer: percentages, a column per status, no Python dict); the title and the snippets name
    the placeholder repo id, never a local path; config.json carries no GGUF name; the export
    prints one 'exported' line and no training-style parameter count."""
    from xdlm_tune.evaluation.summary import summarize_run

    training_run(tmp_path)
    ev = tmp_path / "eval"
    ev.mkdir()
    statuses = ["passed", "wrong_answer", "error", "error", "timeout", "passed"]
    rows = [
        dict(label="run1", steps=s, task_id=f"mbpp/{i}", status=st, syntax_valid=st != "error", nfe=s)
        for s in (4, 8)
        for i, st in enumerate(statuses[:3] if s == 4 else statuses[3:])
    ]
    (ev / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summarize_run(ev)
    capsys.readouterr()
    out = tmp_path / "ex1"
    assert export_main([str(tmp_path / "run"), "--out", str(out), "--eval-summary", str(ev / "summary.json")]) == 0
    printed = capsys.readouterr()
    assert (printed.out + printed.err).count("exported") == 1, printed
    assert "trainable parameters" not in printed.out + printed.err
    card = (out / "README.md").read_text()
    table = (ev / "summary.md").read_text().strip()
    assert "## Evaluation\n\n" + table + "\n" in card
    assert "| run1 | 4 | 3 | 33.3% [6.1, 79.2] | 66.7% [20.8, 93.9] | 1 | 1 | 1 | 0 | 4.0 |" in card
    assert "{'" not in card and str(out) not in card  # no Python dict anywhere; no local path of the export
    assert "\n# <your-hub-id>\n" in card and "repo = '<your-hub-id>'" in card and "# ex1" not in card
    config = json.loads((out / "config.json").read_text())
    assert "_model_name_or_path" not in config


def test_eval_label_of_a_run_names_its_checkpoint_step(tmp_path):
    from xdlm_tune.evaluation.load import checkpoint_model

    training_run(tmp_path)
    assert checkpoint_model(tmp_path / "run", torch.device("cpu")).label == "run step 3"


# --------------------------------------------------------------------------- the export's sampler defaults

# Every eval option away from its default: what the recipe says is what the export samples with.
RECIPE_EVAL = {
    "xdlm": [
        "eval.steps=[12]",
        "eval.sampler=xdlm",
        "eval.temperature=0.7",
        "eval.top_p=0.9",
        "eval.revise_prompt=true",
        "eval.cache=dual",
        "eval.refresh=block",
        "eval.threshold=0.02",
    ],
    "ancestral": ["eval.steps=[6]", "eval.sampler=ancestral", "eval.temperature=0.8", "eval.final_step=ancestral"],
}
# Each of these settings changes the tokens on this model and prompt (checked): a default that
# the export dropped would show.
BITES = {
    "xdlm": dict(temperature=0.5, top_p=1.0, revise_prompt=False, refresh="step", threshold=0.9),
    "ancestral": dict(temperature=0.5, final_step="none", schedule="linear"),
}


@pytest.mark.parametrize("sampler", RECIPE_EVAL)
def test_export_samples_with_the_recipes_eval_settings_by_default(tmp_path, sampler):
    """The recipe's eval section -> config.json's generation block -> diffusion_generate's defaults:
    with no arguments it samples exactly as generate() with those settings (same seed)."""
    from transformers import AutoModelForCausalLM

    from xdlm_tune.sampling import SamplerSettings

    schedule, eps = ("loglinear", 0.01) if sampler == "ancestral" else ("linear", 1e-3)
    recipe = load_recipe(
        None,
        [
            f"diffusion.k={K}",
            f"diffusion.schedule={schedule}",
            f"diffusion.eps={eps}",
            "eval.gen_length=12",
            "eval.block_length=4",
            *RECIPE_EVAL[sampler],
        ],
    )
    model, tok, mask_id = trained("llama", False)
    out = export_model(
        model, tok, tmp_path / "out", mask_id=mask_id, k=K, shift=False, schedule=schedule, eps=eps, recipe=recipe
    )
    ev = recipe.eval
    want = SamplerSettings(
        steps=ev.steps[0],
        gen_length=12,
        block_length=4,
        sampler=sampler,
        temperature=ev.temperature,
        top_p=ev.top_p,
        k=K,
        schedule=schedule,
        eps=eps,
        revise_prompt=ev.revise_prompt,
        final_step=ev.final_step,
        cache=ev.cache,
        refresh=ev.refresh,
        refresh_every=ev.refresh_every,
        threshold=ev.threshold,
    )
    gen = read_settings(out)["sampler"]  # issue #25: the settings whole (format 2)
    assert gen == {
        "sampler": sampler,
        "gen_length": 12,
        "steps": ev.steps[0],
        "block_length": 4,
        **{key: getattr(want, key) for key in ("temperature", "top_p", "revise_prompt", "final_step")},
        **{key: getattr(want, key) for key in ("cache", "refresh", "refresh_every", "threshold")},
        **{key: getattr(want, key) for key in ("k", "schedule", "eps")},
    }
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    _, _, prompts, prompt_mask = inputs(mask_id)
    got = loaded.diffusion_generate(prompts, attention_mask=prompt_mask, generator=torch.Generator().manual_seed(3))

    def sample(settings):
        g = torch.Generator().manual_seed(3)
        return generate(loaded, prompts, settings, mask_id=mask_id, attention_mask=prompt_mask, generator=g)

    assert torch.equal(got, sample(want))
    for key, other in BITES[sampler].items():
        assert not torch.equal(got, sample(want.replace(**{key: other}))), key
