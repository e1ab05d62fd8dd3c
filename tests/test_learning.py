"""Learning works end to end: a tiny denoiser trained from scratch with the real objective
generates a synthetic language with an exact validity check, at few steps, with the real sampler.

The language ("key=value pairs that must agree"): a prompt of BOS, n keys (2 <= n <= 7, drawn from
16 key ids) and SEP filler up to 9 tokens; the answer is the n values f(key) of a fixed random
bijection f onto 16 other ids, then EOS, padded with EOS to 8 tokens (data.pad_answer_with_eos).
A sample is valid when its answer up to the first EOS is exactly [f(k1) ... f(kn)] + EOS: the
right values, in order, and an end exactly where the keys end. Chance is ~16^-n.

Training: a 2-layer Llama (hidden 32) from random weights, made bidirectional, shift on (as for
causal bases), trained by a plain loop on DenoiserObjective (the fused XDLM loss the trainer
uses), NoiseSampler and the per-answer normalisation, for k = 0 (MDLM) and k = 0.1 (XDLM).
Sampling: xdlm_tune.sampling.generate at steps = gen_length / 2 (two tokens per forward pass),
temperature 0, samplers confidence and xdlm. The guard samples the same trained models with
shift off (shift in training, not in sampling): validity must collapse, so this test sees the
alignment of training and sampling and not only that some loss went down.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from xdlm_tune.data import Collator, encode_pair
from xdlm_tune.diffusion import make_schedule
from xdlm_tune.model import make_bidirectional
from xdlm_tune.sampling import generate
from xdlm_tune.train.objective import DenoiserObjective, NoiseSampler, per_answer_weights, step_inputs

pytestmark = pytest.mark.slow

BOS, EOS, SEP, MASK, VOCAB = 1, 2, 3, 127, 128
KEYS = list(range(8, 24))
VALUES = dict(zip(KEYS, (40 + int(i) for i in torch.randperm(16, generator=torch.Generator().manual_seed(1)))))
PROMPT_LEN, GEN_LEN = 9, 8
STEPS = GEN_LEN // 2
TRAIN_STEPS, BATCH, LR = 300, 64, 3e-3


def draw(g: torch.Generator) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids with its EOS) of one sentence of the language."""
    n = int(torch.randint(2, PROMPT_LEN - 1, (1,), generator=g))
    keys = [KEYS[i] for i in torch.randint(0, len(KEYS), (n,), generator=g).tolist()]
    return [BOS] + keys + [SEP] * (PROMPT_LEN - 1 - n), [VALUES[k] for k in keys] + [EOS]


def is_valid(prompt: list[int], answer: list[int]) -> bool:
    want = [VALUES[t] for t in prompt[1:] if t != SEP] + [EOS]
    return answer[: len(want)] == want


def validity(model, k: float, sampler: str, *, shift: bool = True, n: int = 128) -> float:
    g = torch.Generator().manual_seed(123)  # held-out prompts: another stream than training's
    prompts = [draw(g)[0] for _ in range(n)]
    out = generate(
        model,
        torch.tensor(prompts),
        steps=STEPS,
        gen_length=GEN_LEN,
        sampler=sampler,
        k=k,
        mask_id=MASK,
        shift=shift,
        eos_id=EOS,
        temperature=0.0,
    )
    return sum(is_valid(p, a) for p, a in zip(prompts, out[:, PROMPT_LEN:].tolist())) / n


def fresh_model():
    model = tiny_model("llama", seed=0)
    make_bidirectional(model)
    return model


def train(model, k: float):
    """The trainer's objective in a plain loop: noise -> fused XDLM loss -> per-answer mean."""
    torch.manual_seed(0)
    objective = DenoiserObjective(model, k=k, mask_id=MASK, shift=True)
    noise = NoiseSampler(make_schedule("linear"), k, MASK, VOCAB, seed=0)
    collate = Collator(pad_id=0)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(0)
    model.train()
    for step in range(TRAIN_STEPS):
        examples = [
            encode_pair(*draw(g), seq_len=PROMPT_LEN + GEN_LEN, max_prompt_len=None, where="synthetic", eos_pad=EOS)
            for _ in range(BATCH)
        ]
        batch = collate(examples)
        nz = noise(batch["input_ids"], batch["loss_mask"], key=(step,), rows=range(BATCH), n_rows=BATCH)
        inputs = step_inputs(batch, nz, torch.device("cpu"))
        inputs["token_weight"] = inputs["token_weight"] * per_answer_weights(inputs["loss_mask"])
        loss = (inputs["token_weight"][:, None] * objective(**inputs) * inputs["loss_mask"]).sum() / BATCH
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module", params=[0.0, 0.1], ids=["k=0", "k=0.1"])
def trained(request):
    k = request.param
    model = fresh_model()
    untrained = {s: validity(model, k, s) for s in ("confidence", "xdlm")}
    return k, untrained, train(model, k)


@pytest.mark.parametrize("sampler", ["confidence", "xdlm"])
def test_few_step_samples_go_from_invalid_to_valid(trained, sampler):
    k, untrained, model = trained
    assert untrained[sampler] <= 0.10, untrained
    assert validity(model, k, sampler) >= 0.90


@pytest.mark.parametrize("sampler", ["confidence", "xdlm"])
def test_guard_shift_in_training_but_not_in_sampling_collapses(trained, sampler):
    k, _, model = trained
    assert validity(model, k, sampler, shift=False) <= 0.10
