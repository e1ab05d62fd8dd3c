"""MBPP prompt formats rendered exactly as upstream renders them, with upstream's extraction and scoring.

Expected strings in tests/data/mbpp_upstream.json were produced in this session by the real peers,
not by our code: lm-evaluation-harness 0.4.13 (`TaskManager` on its `mbpp` task's fields with local
data, 3 shots) and OpenCompass's own `LMTemplateParser.parse_template` (the class's source from
OpenCompass as vendored in MzeroMiko/LLaDA-XDLM, no meta template, as its LLaDABaseModel uses it)
on `mbpp_gen_830460`'s rounds; the extraction cases are the outputs of OpenCompass's
`MBPPEvaluator._process_answer` (run with the `regex` module it uses).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xdlm_tune.evaluation.extract import extract_mbpp_opencompass
from xdlm_tune.evaluation.tasks import MBPP_FORMATS, check_generations, load_benchmark, load_mbpp

UPSTREAM = json.loads((Path(__file__).parent / "data" / "mbpp_upstream.json").read_text())


@pytest.fixture(scope="module")
def mbpp(benchmark_data):
    return benchmark_data / "mbpp.jsonl"


@pytest.mark.parametrize("fmt", ["opencompass", "lm-eval"])
def test_prompts_render_exactly_as_upstream(mbpp, fmt):
    expected = UPSTREAM[fmt]
    problems = load_mbpp(mbpp, ids=[int(t) for t in expected], prompt_format=fmt)
    for p, (tid, want) in zip(problems, expected.items()):
        assert p.task_id == f"mbpp/{tid}"
        assert p.prompt == want


def test_lm_eval_prompt_equals_the_original_on_mbpp(mbpp):
    """lm-eval's mbpp template and this project's original one coincide on MBPP (3 asserts per task)."""
    orig, lm = (load_mbpp(mbpp, limit=20, prompt_format=f) for f in ("original", "lm-eval"))
    assert [p.prompt for p in orig] == [p.prompt for p in lm]
    assert UPSTREAM["lm-eval"]["11"] == orig[0].prompt


@pytest.mark.parametrize("generation,expected", UPSTREAM["opencompass_extract"])
def test_opencompass_answer_extraction(generation, expected):
    assert extract_mbpp_opencompass(generation) == expected


def test_formats_score_as_upstream(mbpp):
    """Reference programs, written the way each format's shots teach, pass; broken ones fail.
    OpenCompass and lm-eval run the asserts only (no test_setup_code), with 10 s and 3 s limits."""
    ids = [11, 12, 13, 14]
    for fmt, wrap in (
        ("original", lambda c: c + "\n[DONE]"),
        ("opencompass", lambda c: f" '{c}' \n[DONE] \n\n "),
        ("lm-eval", lambda c: c + "\n[DONE]"),
    ):
        problems = load_mbpp(mbpp, ids=ids, prompt_format=fmt)
        assert {p.timeout for p in problems} == {{"original": None, "opencompass": 10.0, "lm-eval": 3.0}[fmt]}
        good = check_generations(problems, [wrap(p.reference) for p in problems], workers=2)
        assert [r["status"] for r in good] == ["passed"] * 4, (fmt, good)
        broken = [wrap("def nothing():\n    return None") for _ in problems]
        assert all(r["status"] != "passed" for r in check_generations(problems, broken, workers=2))
    oc = load_mbpp(mbpp, ids=[11], prompt_format="opencompass")[0]
    assert (
        oc.special_tokens
        and oc.test_code
        == "\n".join(
            json.loads(next(line for line in mbpp.read_text().splitlines() if json.loads(line)["task_id"] == 11))[
                "test_list"
            ]
        )
        + "\n"
    )


def test_unknown_format_and_humaneval_format_are_refused(mbpp, benchmark_data):
    with pytest.raises(ValueError, match="prompt_format='oc'"):
        load_mbpp(mbpp, prompt_format="oc")
    with pytest.raises(ValueError, match="MBPP only"):
        load_benchmark("humaneval", benchmark_data / "HumanEval.jsonl.gz", prompt_format="opencompass")
    assert MBPP_FORMATS == ("original", "opencompass", "lm-eval")


@pytest.mark.parametrize("fmt", MBPP_FORMATS)
def test_only_opencompass_prompts_are_encoded_with_the_tokenizers_special_tokens(mbpp, fmt):
    """OpenCompass encodes its prompt with BOS (its LLaDA model's tokenizer call); the original
    and lm-eval formats without. What reaches the model is checked, through the harness."""
    from tiny_models import BOS_ID, tiny_model, tiny_tokenizer
    from tokenizers.processors import TemplateProcessing

    from xdlm_tune.evaluation.harness import EvalModel, GenerationConfig, diffusion_generations
    from xdlm_tune.sampling import SamplerSettings

    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    assert tok("w5")["input_ids"] == [BOS_ID, 5]  # a tokenizer that adds BOS when asked to
    model = tiny_model("llama")
    model.config.is_causal = False
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    problems = load_mbpp(mbpp, ids=[11], prompt_format=fmt)
    cfg = GenerationConfig(sampling=SamplerSettings(gen_length=2, sampler="confidence", k=0.0), batch_size=1)
    diffusion_generations(EvalModel(model, tok, "tiny", mask_id=120), problems, 1, cfg)
    n = len(tok(problems[0].prompt, add_special_tokens=False)["input_ids"])
    want = [BOS_ID] if fmt == "opencompass" else []
    assert seen and seen[0].shape[1] == len(want) + n + 2
    assert seen[0][0, : len(want)].tolist() == want and int(seen[0][0, len(want)]) != BOS_ID
