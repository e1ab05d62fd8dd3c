"""Remote-code diffusion bases, called strictly: only the keywords a forward accepts (the sampler,
the denoiser, evaluation), prompts grouped by length when there are no position_ids, the dry
run's strict stand-in, and a clear error for remote code that cannot load."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from xdlm_tune.evaluation.harness import EvalModel, GenerationConfig, diffusion_generations
from xdlm_tune.evaluation.tasks import Problem
from xdlm_tune.model import attach_lora, denoiser_hidden, output_projection, prepare_model
from xdlm_tune.model.forward_args import accepted_kwargs, accepts
from xdlm_tune.sampling import SamplerSettings, generate
from xdlm_tune.train import entry
from xdlm_tune.train.dry_run import _diffusion_stand_in

REPO = Path(__file__).resolve().parents[1]
LLADA_FORWARD = [
    "input_ids",
    "inputs_embeds",
    "attention_mask",
    "attention_bias",
    "past_key_values",
    "labels",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
]


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """The dry run's remote-code stand-in (LLaDA's forward signature), prepared with LoRA."""
    torch.set_num_threads(1)
    path, mask_id = _diffusion_stand_in(tmp_path_factory.mktemp("strict") / "model", mask_token=None)
    prepared = prepare_model(
        path, kind="diffusion", trust_remote_code=True, mask_id=mask_id, shift=False, lora={"r": 4}
    )
    return prepared


def test_the_stand_in_has_llada_s_strict_signature(strict):
    """Checked against the parameter list of LLaDAModelLM.forward in the original modeling_llada.py
    (its last one, cache_position, aside): no **kwargs, no position_ids, no logits_to_keep."""
    import inspect

    hf = strict.model.get_base_model()
    params = list(inspect.signature(hf.forward).parameters)
    assert params == LLADA_FORWARD
    ids = torch.randint(3, 200, (1, 6))
    for extra in ("position_ids", "logits_to_keep"):
        with pytest.raises(TypeError, match=extra):
            hf(input_ids=ids, **{extra: None})
    assert not accepts(strict.model, "position_ids") and accepts(strict.model, "attention_mask")
    assert accepted_kwargs(strict.model, input_ids=1, position_ids=2, logits_to_keep=3) == {"input_ids": 1}


def test_a_native_model_accepts_everything(tmp_path):
    from tiny_models import tiny_model

    model = attach_lora(tiny_model("llama"), mask_id=5, r=4)
    assert accepts(model, "position_ids") and accepted_kwargs(model, position_ids=1, foo=2) == {
        "position_ids": 1,
        "foo": 2,
    }


def test_the_sampler_calls_a_strict_model_and_refuses_a_padded_batch(strict):
    """Checked against each prompt sampled alone: a batch of equal-length prompts gives the same
    tokens; a left-padded batch is refused (its rows' positions would shift), not silently wrong."""
    model = strict.model.eval()
    prompts = torch.randint(3, 200, (3, 5), generator=torch.Generator().manual_seed(0))
    kw = dict(steps=4, gen_length=8, block_length=4, mask_id=strict.mask_id, shift=False, temperature=0.0)
    for sampler in ("confidence", "xdlm", "ancestral"):
        batch = generate(model, prompts, sampler=sampler, **kw)
        alone = torch.cat([generate(model, prompts[i : i + 1], sampler=sampler, **kw) for i in range(3)])
        assert torch.equal(batch, alone) and not (batch[:, 5:] == strict.mask_id).any(), sampler
    mask = torch.ones_like(prompts)
    mask[1, :2] = 0
    with pytest.raises(ValueError, match="takes no position_ids"):
        generate(model, prompts, attention_mask=mask, **kw)


def test_the_denoiser_reads_a_strict_model_s_hidden_states(strict):
    model = strict.model.eval()
    ids = torch.randint(3, 200, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding: positions unchanged, as training batches are
    with torch.no_grad():
        hidden = denoiser_hidden(model, ids, mask, shift=False)
        logits = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(hidden @ output_projection(model)[0].T, logits)


class _Tok:
    """A character tokenizer over the stand-in's byte vocabulary (ids 3..258)."""

    pad_token_id, eos_token_id = 0, 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (ord(c) % 200) for c in text]}

    def batch_decode(self, ids, skip_special_tokens=True):
        return ["".join(chr(32 + (int(i) % 90)) for i in row if int(i) > 2) for row in ids]


def test_evaluation_groups_prompts_of_equal_length_for_a_model_without_position_ids(strict):
    """Checked against each problem generated alone: prompts of mixed lengths (which one padded
    batch could not give this model) come back in order with the same answers."""
    problems = [
        Problem(benchmark="t", task_id=str(i), prompt="x" * n, test_code="", reference="")
        for i, n in enumerate([4, 6, 4, 5, 6, 4])
    ]
    em = EvalModel(model=strict.model.eval(), tokenizer=_Tok(), label="strict", mask_id=strict.mask_id, shift=False)
    cfg = GenerationConfig(sampling=SamplerSettings(gen_length=8, block_length=4, sampler="confidence"), batch_size=2)
    together, nfe = diffusion_generations(em, problems, 4, cfg)
    alone = [diffusion_generations(em, [p], 4, cfg)[0][0] for p in problems]
    assert together == alone and len(together) == len(problems) and nfe == [4] * len(problems)


def test_dry_run_of_a_remote_code_diffusion_recipe_uses_the_strict_stand_in(capsys):
    """A diffusion base that is neither LLaDA nor Dream: one step, the held-out ELBO and a
    checkpoint through the strict stand-in (the dry run would have caught LLaDA's TypeErrors)."""
    code = entry.main(
        [
            str(REPO / "recipes" / "llada-8b-xdlm-cpt-zero2.yaml"),
            "model.name_or_path=someone/remote-dlm",
            "deepspeed.config=null",
            "deepspeed.zero_stage=null",
            "--dry-run",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "dry run OK" in out and "xdlm_standin stand-in" in out and "nan" not in out


BROKEN = '''
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class BrokenConfig(PretrainedConfig):
    model_type = "brokendlm"


class BrokenModel(PreTrainedModel):
    """Like LLaDA's LLaDAModelLM: never calls post_init (fails under transformers 5)."""
    config_class = BrokenConfig

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(16, 8)

    def forward(self, input_ids):
        return self.wte(input_ids)
'''


def test_remote_code_that_cannot_load_is_a_clear_error_naming_its_model_type(tmp_path):
    (tmp_path / "modeling_broken.py").write_text(textwrap.dedent(BROKEN))
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "brokendlm",
                "architectures": ["BrokenModel"],
                "auto_map": {"AutoConfig": "modeling_broken.BrokenConfig", "AutoModel": "modeling_broken.BrokenModel"},
            }
        )
    )
    save_file({"wte.weight": torch.zeros(16, 8)}, tmp_path / "model.safetensors")
    with pytest.raises(RuntimeError, match=r"model_type 'brokendlm'.*trust_remote_code.*llada, Dream load natively"):
        prepare_model(tmp_path, kind="diffusion", trust_remote_code=True, mask_id=3, shift=False)
