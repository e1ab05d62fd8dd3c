"""LLaDA- and Dream-format test bases: the reference checkpoints in tests/data/fixtures, copied
with tokenizer files laid out as each base ships them, and an independent byte-level BPE.

    path = llada_base(tmp_path)   # llada-a + tokenizer.json (PreTrainedTokenizerFast), no .py files
    path = dream_base(tmp_path)   # dream-a + vocab.json / merges.txt, tokenizer_class DreamTokenizer
    slow_bpe_ids(path, text)      # DreamTokenizer's algorithm, written out in plain Python

The Dream layout follows its Hub repo: tokenization_dream.DreamTokenizer (a slow byte-level
BPE: NFC, Qwen2's pre-tokenization regex, merges by rank) registered in tokenizer_config.json's
auto_map, vocab.json + merges.txt, the special tokens after the BPE vocabulary. The BPE
vocabulary here is trained on Python stdlib text with `tokenizers` (998 entries), so the
special tokens land at 998 (<|endoftext|>, eos = pad), 999 (<|beginoftext|>, bos) and 1000
(<|mask|>, the fixture's mask_token_id); the copied config.json is given those eos/bos/pad ids.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import unicodedata
from pathlib import Path

import regex

REPO = Path(__file__).resolve().parents[1]
# Written by the ORIGINAL LLaDA / Dream modeling code (provenance: tests/data/fixtures/README.md).
FIXTURES = REPO / "tests" / "data" / "fixtures"
MASK_ID = 1000  # both fixtures' config.mask_token_id
N_BPE = 998
EOS, BOS = "<|endoftext|>", "<|beginoftext|>"
# Qwen2's (and DreamTokenizer's) pre-tokenization pattern.
PRETOKENIZE = regex.compile(
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"reference checkpoint {name} missing under {FIXTURES} (it ships with the tests)")
    return path


def copy_fixture(name: str, dest: Path) -> Path:
    """A writable copy (the reference stays untouched)."""
    out = dest / name
    shutil.copytree(fixture(name), out, ignore=shutil.ignore_patterns("reference.pt"))
    for p in [out, *out.iterdir()]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return out


def _patch_config(path: Path, **fields) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(fields)
    (path / "config.json").write_text(json.dumps(config, indent=2))


@functools.lru_cache(maxsize=1)
def trained_bpe() -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    """(vocab items, merges) of a byte-level BPE with N_BPE entries, trained on stdlib text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from xdlm_tune.data import stdlib_files

    texts = []
    for f in stdlib_files()[:30]:
        try:
            texts.append(f.read_text(encoding="utf-8")[:4000])
        except (UnicodeDecodeError, OSError):
            continue
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=N_BPE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = tuple(m if isinstance(m, str) else " ".join(m) for m in model["merges"])
    vocab = tuple(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    assert len(vocab) == N_BPE, len(vocab)
    return vocab, merges


def _added(content: str) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def dream_base(tmp_path: Path) -> Path:
    """dream-a with Dream's tokenizer files (custom class, no tokenizer.json, no .py file)."""
    path = copy_fixture("dream-a", tmp_path)
    vocab, merges = trained_bpe()
    (path / "vocab.json").write_text(json.dumps(dict(vocab), ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {N_BPE: EOS, N_BPE + 1: BOS, N_BPE + 2: "<|mask|>"}
    config = {
        "tokenizer_class": "DreamTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "added_tokens_decoder": {str(i): _added(t) for i, t in specials.items()},
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "mask_token": "<|mask|>",
        "errors": "replace",
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (path / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "mask_token": "<|mask|>"})
    )
    _patch_config(path, bos_token_id=N_BPE + 1, eos_token_id=N_BPE, pad_token_id=N_BPE)
    return path


def llada_base(tmp_path: Path, *, tokenizer_class: str = "PreTrainedTokenizerFast") -> Path:
    """llada-a with a tokenizer.json (LLaDA's layout: a fast tokenizer, mask <|mdm_mask|> at 1000)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path = copy_fixture("llada-a", tmp_path)
    vocab, merges = trained_bpe()
    backend = Tokenizer(models.BPE(vocab=dict(vocab), merges=[tuple(m.split(" ")) for m in merges]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOS, BOS, "<|mdm_mask|>"])  # ids 998, 999, 1000
    backend.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": tokenizer_class,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "model_max_length": 4096,
    }
    if tokenizer_class != "PreTrainedTokenizerFast":
        config["auto_map"] = {"AutoTokenizer": [None, f"tokenization_llada.{tokenizer_class}"]}
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    _patch_config(path, bos_token_id=N_BPE + 1, eos_token_id=N_BPE, pad_token_id=N_BPE)
    return path


# --------------------------------------------------------------------------- oracle


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def slow_bpe_ids(path: Path, text: str, specials: dict[str, int]) -> list[int]:
    """Token ids of `text` by DreamTokenizer's algorithm, from the folder's vocab.json and merges.txt:
    special tokens split out first, NFC, the pre-tokenization regex, each piece's UTF-8 bytes
    mapped to characters, then the lowest-ranked adjacent pair merged until none is in merges."""
    vocab = json.loads((path / "vocab.json").read_text())
    lines = (path / "merges.txt").read_text(encoding="utf-8").splitlines()
    ranks = {tuple(line.split(" ")): i for i, line in enumerate(x for x in lines if x and not x.startswith("#version"))}
    table = _bytes_to_unicode()
    pattern = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")
    ids: list[int] = []
    for part in pattern.split(text):
        if part in specials:
            ids.append(specials[part])
            continue
        for piece in PRETOKENIZE.findall(unicodedata.normalize("NFC", part)):
            word = [table[b] for b in piece.encode("utf-8")]
            while len(word) > 1:
                pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
                rank, i = min(pairs)
                if rank == float("inf"):
                    break
                word[i : i + 2] = [word[i] + word[i + 1]]
            ids += [vocab[w] for w in word]
    return ids
