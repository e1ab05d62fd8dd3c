"""Generation-quality metrics: the judge's NLL against a direct computation, entropy, compile
rate, and `xdlm-tune eval --benchmark genppl` end to end on tiny models (files and fields)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import save_tiny_model, tiny_model, tiny_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from xdlm_tune.config import load_recipe, save_recipe
from xdlm_tune.evaluation.entry import eval_main
from xdlm_tune.evaluation.genppl.metrics import Sample, judge_nll, score, unigram_entropy
from xdlm_tune.evaluation.harness import EvalModel
from xdlm_tune.evaluation.stats import wilson


def test_unigram_entropy():
    assert unigram_entropy([4, 4, 4, 4]) == 0.0
    assert unigram_entropy([1, 1, 2, 2]) == pytest.approx(math.log(2))
    assert unigram_entropy([1, 2, 3]) == pytest.approx(math.log(3))
    assert unigram_entropy([]) == 0.0


def test_judge_nll_matches_one_sequence_at_a_time():
    """Batched, right-padded scoring of the target tokens only = each sequence alone."""
    judge = EvalModel(tiny_model("llama"), tiny_tokenizer(), "judge")
    contexts = [[1], [5, 6, 7], [9, 10]]
    targets = [[11, 12, 13, 2], [14], [15, 16]]
    got = judge_nll(judge, contexts, targets, batch_size=3)
    for (nll, n), c, t in zip(got, contexts, targets):
        ids = torch.tensor([c + t])
        logp = judge.model(input_ids=ids).logits[0].double().log_softmax(-1)
        want = -sum(logp[len(c) + j - 1, tok].item() for j, tok in enumerate(t))
        assert n == len(t) and nll == pytest.approx(want, rel=1e-5)


@pytest.fixture(scope="module")
def code_tok() -> PreTrainedTokenizerFast:
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t.train_from_iterator(["def f(x):\n    return x + 1\n"] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>")


def test_score_rows_eos_and_compile_rate(code_tok):
    judge = EvalModel(tiny_model("llama", vocab_size=320), code_tok, "judge")
    enc = lambda s: code_tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    samples = [
        Sample(enc("def f(x):\n"), enc("    return x\n"), True),  # compiles, ended with EOS
        Sample(enc("def f(x):\n"), enc("    return (x\n"), False),
    ]  # does not compile
    row = score(samples, code_tok, judge, label="m", steps=4, code=True, batch_size=2)
    assert row.n == 2 and row.steps == 4 and row.syntax_valid == 0.5 and row.ended == 0.5
    assert row.scored_tokens == len(enc("    return x\n")) + 1 + len(enc("    return (x\n"))
    nll = judge_nll(
        judge, [enc("def f(x):\n")] * 2, [enc("    return x\n") + [code_tok.eos_token_id], enc("    return (x\n")], 2
    )
    assert row.gen_ppl == pytest.approx(math.exp(sum(v for v, _ in nll) / row.scored_tokens), rel=1e-6)
    assert row.entropy == pytest.approx((unigram_entropy(samples[0].ids) + unigram_entropy(samples[1].ids)) / 2)
    assert score(samples, code_tok, judge, label="m", steps=4, code=False, batch_size=2).syntax_valid is None
    # intervals over the samples, from the per-sample scores `compare` pairs on
    details = []
    row = score(samples, code_tok, judge, label="m", steps=4, code=True, batch_size=2, details=details)
    assert [(d["nll"], d["tokens"], d["compiles"]) for d in details] == [(*nll[0], True), (*nll[1], False)]
    assert [d["entropy"] for d in details] == [unigram_entropy(s.ids) for s in samples]
    lo, hi = row.gen_ppl_ci
    per_sample = sorted(math.exp(v / n) for v, n in nll)
    assert per_sample[0] - 1e-6 <= lo <= row.gen_ppl <= hi <= per_sample[1] + 1e-6  # between the two resamples
    assert row.syntax_valid_ci == wilson(1, 2) and row.ended_ci == wilson(1, 2)
    # after an SFT prompt (prose) only the answer is compiled
    sft = [Sample(enc("Write f. Tests: assert f(1) == 1\n"), enc("def f(x):\n    return x\n"), True)]
    assert score(sft, code_tok, judge, label="m", steps=4, code=True, batch_size=1).syntax_valid == 0.0
    assert (
        score(sft, code_tok, judge, label="m", steps=4, code=True, batch_size=1, compile_prefix=False).syntax_valid
        == 1.0
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_genppl_cli_unconditional_files_and_fields(tiny_dir, tmp_path, capsys):
    out = tmp_path / "gp"
    assert (
        eval_main(
            [
                "--benchmark",
                "genppl",
                "--model",
                str(tiny_dir),
                "--num-samples",
                "3",
                "--gen-length",
                "8",
                "--steps",
                "2",
                "8",
                "--out",
                str(out),
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    rows = json.loads((out / "genppl.json").read_text())
    assert [(r["label"], r["steps"]) for r in rows] == [
        ("model AR greedy", None),
        ("model AR sampled", None),
        ("model+xdlm-sampler", 2),
        ("model+xdlm-sampler", 8),
    ]
    for r in rows:
        assert (
            r["n"] == 3 and r["gen_ppl"] > 1 and 0 <= r["entropy"] <= math.log(8) + 1e-9 and r["syntax_valid"] is None
        )
    assert (out / "genppl.png").stat().st_size > 0 and "gen-PPL" in (out / "genppl.md").read_text()
    samples = [json.loads(x) for x in (out / "samples_genppl.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and {s["steps"] for s in samples} == {2, 8}
    printed = capsys.readouterr()
    assert "| model+xdlm-sampler | 8 | 3 |" in printed.out
    # Every long stage shows a bar (in a log file: its final state, with the elapsed time).
    for stage in ("genppl sample model+xdlm-sampler (8 steps): 100%", "genppl judge greedy reference: 100%"):
        assert stage in printed.err, printed.err
    assert printed.err.count("genppl score by model: 100%") == 4  # AR greedy, AR sampled, 2 budgets
    assert all({"index", "nll", "tokens", "entropy", "sampler"} <= set(s) for s in samples)
    assert [s["index"] for s in samples] == [0, 1, 2] * 2 and samples[0]["sampler"]["steps"] == 2
    assert all(len(r["gen_ppl_ci"]) == 2 and len(r["ended_ci"]) == 2 for r in rows)


def test_genppl_cli_heldout_prefixes_and_errors(tiny_dir, tmp_path):
    words = [" ".join(f"w{3 + (i * 7 + j) % 100}" for j in range(40)) for i in range(12)]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": w}) + "\n" for w in words))
    recipe = save_recipe(
        load_recipe(None, [f"data.source={src}", "data.seq_len=16", "data.eval_holdout=4"]), tmp_path / "r.yaml"
    )
    out = tmp_path / "gp"
    eval_main(
        [
            "--benchmark",
            "genppl",
            "--model",
            str(tiny_dir),
            "--recipe",
            str(recipe),
            "--prefix-tokens",
            "5",
            "--num-samples",
            "20",
            "--gen-length",
            "4",
            "--steps",
            "4",
            "--no-reference",
            "--out",
            str(out),
        ]
    )
    rows = json.loads((out / "genppl.json").read_text())
    assert len(rows) == 1 and rows[0]["n"] == 10  # 4 held-out documents of 41 tokens: 10 blocks of 16
    prefixes = [json.loads(x)["prefix"] for x in (out / "samples_genppl.jsonl").read_text().splitlines()]
    assert all(len(p.split()) in (4, 5) for p in prefixes) and len(set(prefixes)) == 10  # 4: an EOS inside
    with pytest.raises(SystemExit, match="--steps \\[9\\]"):
        eval_main(["--benchmark", "genppl", "--model", str(tiny_dir), "--gen-length", "8", "--steps", "9"])
    with pytest.raises(SystemExit, match="needs a recipe"):
        eval_main(["--benchmark", "genppl", "--model", str(tiny_dir), "--prefix-tokens", "4"])
