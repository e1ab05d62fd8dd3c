"""The lm-eval model `xdlm`: generate_until through our sampler, loglikelihood from the bound, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from tiny_models import save_tiny_model  # noqa: E402

from xdlm_tune.diffusion import forward_noise, make_schedule, xdlm_loss  # noqa: E402
from xdlm_tune.lm_eval.entry import TASKS_DIR, build_argv, main  # noqa: E402
from xdlm_tune.lm_eval.model import XDLMLM, ModelArgError  # noqa: E402
from xdlm_tune.sampling import generate  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


def _req(kind, args, i=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=i, metadata=("t", i, 1))


def test_generate_until_is_our_sampler_cut_at_until(tiny_dir, caplog):
    lm = XDLMLM(pretrained=str(tiny_dir), steps=6, block_length=4, sampler="xdlm", batch_size=2, device="cpu")
    tok = lm.em.tokenizer
    prompts = ["w5 w6 w7 w8 w9", "w10 w11", "w30 w31 w32"]
    until = ["w40", "w41"]
    reqs = [_req("generate_until", (p, {"until": until, "max_gen_toks": 10}), i) for i, p in enumerate(prompts)]
    with caplog.at_level("WARNING"):
        out = lm.generate_until(reqs)
    assert "rounded up to 12" in caplog.text  # 10 -> a multiple of block_length 4
    for p, text in zip(prompts, out):  # each prompt alone, exactly as generate() does it
        ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
        seq = generate(
            lm.em.model,
            ids,
            steps=6,
            gen_length=12,
            block_length=4,
            sampler="xdlm",
            k=lm.k,
            mask_id=lm.em.mask_id,
            shift=lm.em.shift,
            eos_id=tok.eos_token_id,
            stop_sequences=[tok(s, add_special_tokens=False)["input_ids"] for s in until],
        )
        alone = tok.decode(seq[0, ids.shape[1] :], skip_special_tokens=True)
        cut = min([alone.find(s) for s in until if s in alone] or [len(alone)])
        assert text == alone[:cut]
        assert not any(s in text for s in until)
    with pytest.raises(ModelArgError, match="steps=6"):  # 13 -> 16 = 4 blocks of 4: 6 steps do not split evenly
        lm._gen_length(13)


def test_bad_model_args_name_the_field(tiny_dir):
    with pytest.raises(ModelArgError, match="stepz"):
        XDLMLM(pretrained=str(tiny_dir), stepz=3)
    with pytest.raises(ModelArgError, match="sampler='greedy'"):
        XDLMLM(pretrained=str(tiny_dir), sampler="greedy")
    with pytest.raises(ModelArgError, match="mc_num='many'"):
        XDLMLM(pretrained=str(tiny_dir), mc_num="many")


def test_cache_and_threshold_model_args_reach_the_sampler(tiny_dir):
    lm = XDLMLM(
        pretrained=str(tiny_dir),
        steps=4,
        sampler="xdlm",
        cache="dual",
        refresh="block",
        refresh_every="2",
        threshold="0.9",
        revise_prompt="true",
        device="cpu",
    )
    s = lm.sampling
    assert (s.cache, s.refresh, s.refresh_every, s.threshold, s.revise_prompt) == ("dual", "block", 2, 0.9, True)
    with pytest.raises(ModelArgError, match="cache"):
        XDLMLM(pretrained=str(tiny_dir), cache="triple")


def test_loglikelihood_ranks_the_true_continuation_after_training(tiny_dir):
    lm = XDLMLM(pretrained=str(tiny_dir), mc_num=64, mc_batch_size=64, device="cpu")
    tok, model = lm.em.tokenizer, lm.em.model
    context, true, shuffled = "w10 w11 w12 w13", " w20 w21 w22 w23 w24 w25", " w23 w25 w20 w24 w22 w21"
    pair = [_req("loglikelihood", (context, true)), _req("loglikelihood", (context, shuffled), 1)]
    (before_true, _), (before_shuffled, _) = lm.loglikelihood(pair)
    ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
    x0 = torch.tensor([tok(true, add_special_tokens=False)["input_ids"]]).expand(16, -1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched, gen = make_schedule(), torch.Generator().manual_seed(0)
    model.train()
    for _ in range(30):  # the XDLM objective on the target tokens, context clean (as the bound)
        t = sched.sample_t(16, antithetic=True, generator=gen)
        z = forward_noise(x0, sched.alpha(t), k=lm.k, mask_id=lm.em.mask_id, vocab_size=lm.vocab_size, generator=gen)
        ids = torch.cat([torch.tensor(ctx_ids).expand(16, -1), z], 1)
        logits = model(input_ids=ids).logits[:, len(ctx_ids) - 1 : -1]  # shift: token i from position i - 1
        loss = (
            sched.neg_dalpha_dt(t)[:, None] * xdlm_loss(logits, z, x0, sched.alpha(t), k=lm.k, mask_id=lm.em.mask_id)
        ).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    (ll_true, greedy), (ll_shuffled, _) = lm.loglikelihood(pair)
    assert ll_true > ll_shuffled + 5.0 and greedy is False
    assert ll_true - ll_shuffled > before_true - before_shuffled + 5.0 and ll_true > before_true + 5.0
    assert lm.loglikelihood([_req("loglikelihood", (context, true))])[0][0] == ll_true  # fixed seed
    (rolled,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (context + true,))])
    assert rolled < 0 and torch.isfinite(torch.tensor(rolled))


def test_build_argv_adds_model_and_tasks_unless_given():
    assert build_argv(["--tasks", "x"]) == ["run", "--model", "xdlm", "--tasks", "x", "--include_path", str(TASKS_DIR)]
    assert build_argv(["run", "--model=hf", "--include_path", "d"]) == ["run", "--model=hf", "--include_path", "d"]
    assert build_argv(["ls", "tasks"]) == ["ls", "tasks", "--include_path", str(TASKS_DIR)]


@pytest.mark.slow
def test_cli_error_is_one_line(tiny_dir, capsys):
    assert main(["--model_args", f"pretrained={tiny_dir},bogus=1", "--tasks", "pydocs_mc", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert "xdlm-tune lm-eval: model_args bogus: unknown" in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_runs_offline_tasks_and_writes_results(tiny_dir, tmp_path, benchmark_data, monkeypatch, capsys):
    """`xdlm-tune lm-eval` on the shipped tasks (generation and likelihood), results where lm-eval writes them."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "results"
    rc = main(
        [
            "--model_args",
            f"pretrained={tiny_dir},steps=4,gen_length=8,mc_num=4,max_length=64",
            "--tasks",
            "mbpp_local,pydocs_mc,pydocs_ppl",
            "--limit",
            "2",
            "--confirm_run_unsafe_code",
            "--metadata",
            json.dumps({"mbpp_path": str(benchmark_data / "mbpp.jsonl")}),
            "--output_path",
            str(out),
            "--log_samples",
        ]
    )
    assert rc == 0
    (result,) = out.rglob("results_*.json")
    res = json.loads(result.read_text())["results"]
    assert res["mbpp_local"]["pass_at_1,none"] == 0.0  # an untrained tiny model
    assert 0.0 <= res["pydocs_mc"]["acc,none"] <= 1.0 and res["pydocs_ppl"]["bits_per_byte,none"] > 0
    assert len(list(out.rglob("samples_mbpp_local_*.jsonl"))) == 1
    printed = capsys.readouterr().out
    assert f"xdlm-tune lm-eval: {result.name} with 95% intervals" in printed
    assert "| mbpp_local | pass_at_1 | 2 | 0.0000 [0.0000, 0.6576] | Wilson |" in printed


def test_interval_table_wilson_for_rates_stderr_for_the_rest():
    from xdlm_tune.lm_eval.entry import interval_table

    results = {
        "results": {
            "pydocs_mc": {"alias": "pydocs_mc", "acc,none": 0.6, "acc_stderr,none": 0.1633, "acc_norm,none": 0.3},
            "pydocs_ppl": {"bits_per_byte,none": 2.7159, "bits_per_byte_stderr,none": "N/A"},
            "other": {"score,none": 5.0, "score_stderr,none": 0.5},
        },
        "n-samples": {"pydocs_mc": {"original": 40, "effective": 10}, "pydocs_ppl": {"effective": 10}},
    }
    table = interval_table(results)
    assert "| pydocs_mc | acc | 10 | 0.6000 [0.3127, 0.8318] | Wilson |" in table  # 6 of 10
    assert "| pydocs_mc | acc_norm | 10 | 0.3000 [0.1078, 0.6032] | Wilson |" in table
    assert "| pydocs_ppl | bits_per_byte | 10 | 2.7159 | - |" in table
    assert "| other | score | - | 5.0000 [4.0200, 5.9800] | +-1.96 stderr |" in table
    assert "stderr |" not in table.split("\n")[0] and "alias" not in table


@pytest.mark.slow
def test_two_processes_give_the_one_process_results(tiny_dir, tmp_path):
    """accelerate launch -m xdlm_tune.lm_eval on 2 CPU processes: lm-eval splits the requests, our
    gather brings them back, and since each estimate has its own fixed seed the results are the same."""
    import os
    import subprocess
    import sys

    from xdlm_tune.launch import free_port

    args = [
        "--model_args",
        f"pretrained={tiny_dir},mc_num=4,max_length=64",
        "--tasks",
        "pydocs_mc,pydocs_ppl",
        "--limit",
        "4",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    results = []
    for n, out in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        launch = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(free_port()),
        ]
        cmd = (launch if n == 2 else [sys.executable]) + [
            "-m",
            "xdlm_tune.lm_eval.entry",
            *args,
            "--output_path",
            str(out),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("on rank 1" in proc.stderr + proc.stdout) == (n == 2)  # one group of two, not two lone runs
        (path,) = out.rglob("results_*.json")
        results.append(json.loads(path.read_text()))
    one, two = results
    for task in ("pydocs_mc", "pydocs_ppl"):
        for metric, value in one["results"][task].items():
            if not metric.endswith("stderr,none") and isinstance(value, float):
                assert two["results"][task][metric] == pytest.approx(value, rel=1e-6), (task, metric)


def test_lm_eval_builtin_models_stay_registered():
    """Registering `xdlm` must not hide lm-eval's own models (its registry is filled only while empty)."""
    from lm_eval.api.registry import get_model

    assert get_model("xdlm") is XDLMLM and get_model("hf").__name__ == "HFLM"


def test_likelihood_cost_is_printed_before_the_work(tiny_dir, capsys):
    """mc_num draws per request made a 4-request smoke run take minutes with nothing said: the
    forward passes are printed first (distinct requests only: repeats are memoised)."""
    lm = XDLMLM(pretrained=str(tiny_dir), mc_num=8, mc_batch_size=4, device="cpu")
    reqs = [_req("loglikelihood", ("w10 w11", c), i) for i, c in enumerate([" w20", " w21", " w20"])]
    lm.loglikelihood(reqs)
    err = capsys.readouterr().err
    assert "2 bound estimate(s) x mc_num=8 Monte-Carlo draws = 4 forward passes" in err, err
    assert "`steps` does not apply" in err and "mc_num=8" in err
    lm.loglikelihood_rolling([_req("loglikelihood_rolling", ("w10 w11 w12",))])
    assert "1 bound estimate(s) x mc_num=8" in capsys.readouterr().err


def test_help_shows_mc_num_and_a_likelihood_example(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "mc_num (default 128)" in out and "`steps` does not apply" in out
    assert "pretrained=smollm2-135m,mc_num=16 --tasks pydocs_mc" in out


def test_hub_only_task_offline_points_to_the_offline_tasks(monkeypatch, capsys):
    """What datasets raises for `--tasks hellaswag` without the Hub; the fix is a task, not --data."""
    import lm_eval.__main__

    def offline():
        raise ConnectionError("Couldn't reach 'Rowan/hellaswag' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", offline)
    assert main(["--tasks", "hellaswag", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xdlm-tune lm-eval: the data set 'Rowan/hellaswag' is not in the local cache")
    assert "--tasks pydocs_mc,pydocs_ppl,mbpp_local" in err and "--data" not in err


def test_git_hash_lookup_is_quiet_outside_a_checkout(tmp_path, monkeypatch, capfd):
    import lm_eval.evaluator

    from xdlm_tune.lm_eval.entry import _quiet_git_hash

    monkeypatch.chdir(tmp_path)  # not a git checkout
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    with _quiet_git_hash():
        lm_eval.evaluator.get_git_commit_hash()
    assert "fatal" not in capfd.readouterr().err
    lm_eval.evaluator.get_git_commit_hash()  # lm-eval's own: the line the wrapper drops
    assert "not a git repository" in capfd.readouterr().err


def test_importing_the_package_registers_the_model():
    """`import xdlm_tune.lm_eval` (the natural import) registers `xdlm` for lm_eval.simple_evaluate and the
    stock lm-eval CLI; checked in a fresh interpreter. Planted: the package __init__ without its import of
    model.py -> lm-eval's registry has no `xdlm`."""
    import subprocess
    import sys

    code = (
        "import xdlm_tune.lm_eval\n"
        "from lm_eval.api.registry import get_model\n"
        "assert get_model('xdlm') is xdlm_tune.lm_eval.XDLMLM\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
