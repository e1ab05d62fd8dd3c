"""Generation quality where pass@1 cannot see yet: generative perplexity, unigram entropy, compile rate.

For each step budget the diffusion sampler writes ``num_samples`` continuations of ``gen_length``
tokens, either unconditional (after one EOS token: the document boundary the pretraining data
packs between documents) or after held-out prefixes of the recipe's data. Each sample is cut at
its first EOS and scored by an autoregressive judge (by default the base model before
conversion):

* gen-PPL = exp(sum of the judge's NLL / number of scored tokens) over all samples. The sample's
  text is re-tokenised with the judge's tokenizer and scored after the prefix (after the judge's
  EOS when unconditional: the same document boundary), up to and including the first EOS when the
  sample has one, as the XDLM / MDLM small-scale code does.
* entropy: the unigram entropy (nats) of each sample's own token ids up to its first EOS, averaged
  over samples.
* every metric has a 95% interval over the samples (stats.py): a bootstrap for gen-PPL (samples
  resampled with their token counts) and entropy, Wilson for the compile and EOS rates. The
  per-sample NLLs are saved with the samples, so `xdlm-tune compare` can pair two runs. Degenerate repetition gets a low perplexity AND a low entropy: read both.
* syntax_valid (code data): the share of samples whose text compiles with ``compile()``: prefix +
  continuation for code prefixes, the answer alone after an SFT prompt (``compile_prefix=False``);
  nothing generated is ever executed here.

The judge's own greedy and sampled (temperature 1) continuations of the same prefixes, scored the
same way, are the reference rows (``steps`` None).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ...config.sampler import SamplerSettings
from ...console import progress
from ...sampling import generate
from ..extract import syntax_valid
from ..harness import EvalModel, GenerationConfig
from ..stats import Interval, bootstrap_ci, fmt_rate, fmt_value, gen_ppl_ci, wilson


def genppl_settings(settings: SamplerSettings) -> SamplerSettings:
    """How gen-PPL is measured from a model's ``settings``: its length, budget and trained k / schedule / eps,
    sampled by the exact reverse process (sampler ancestral, temperature 1, no nucleus) in one block,
    without the speed options (genppl, the recipe's genppl task and the sweep all start here)."""
    return dataclasses.replace(
        settings,
        sampler="ancestral",
        temperature=1.0,
        top_p=1.0,
        block_length=None,
        revise_prompt=False,
        final_step="none",
        cache="none",
        refresh="step",
        refresh_every=None,
        threshold=None,
    )


@dataclass(frozen=True)
class Sample:
    """One generation: ``prefix`` and ``ids`` are generator token ids (``ids`` cut at the first EOS)."""

    prefix: list[int]
    ids: list[int]
    ended: bool  # the sample produced an EOS within gen_length


@dataclass
class GenRow:
    """Metrics of one model at one step budget (``steps`` None: the AR judge's own samples)."""

    label: str
    steps: int | None
    n: int
    gen_ppl: float
    entropy: float
    scored_tokens: int
    syntax_valid: float | None = None  # code data only
    ended: float = 0.0  # share of samples that produced an EOS
    gen_ppl_ci: Interval | None = None  # 95% intervals over the samples
    entropy_ci: Interval | None = None
    syntax_valid_ci: Interval | None = None
    ended_ci: Interval | None = None


# --------------------------------------------------------------------------- prefixes


def start_token(tokenizer) -> int:
    """The id that starts an unconditional sample: EOS (it separates packed documents)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("genppl: the tokenizer has no eos_token; unconditional samples start after one EOS")
    return tokenizer.eos_token_id


def heldout_prefixes(data_cfg, tokenizer, *, n: int, prefix_tokens: int) -> list[list[int]]:
    """Up to ``n`` prefixes from the recipe's held-out records (the same set the held-out ELBO uses):
    the prompt for SFT data, the first ``prefix_tokens`` tokens of each held-out block otherwise."""
    import datasets

    from ...data import encode_dataset, load_records

    records = load_records(data_cfg)
    if not records.eval:
        raise ValueError(
            "genppl: the recipe holds out no records (data.eval_holdout = 0): nothing to continue; "
            "raise data.eval_holdout or use --prefix-tokens 0 (unconditional)"
        )
    examples = encode_dataset(datasets.Dataset.from_list(records.eval), data_cfg, tokenizer)
    out = []
    for e in examples.select(range(min(n, len(examples)))):
        ids = e["input_ids"]
        out.append(ids[: e["prompt_len"]] if data_cfg.mode == "sft" else ids[:prefix_tokens])
    return out


# --------------------------------------------------------------------------- samples


def _cut(ids: list[int], eos: int | None) -> tuple[list[int], bool]:
    if eos is not None and eos in ids:
        return ids[: ids.index(eos)], True
    return ids, False


def _left_pad(prefixes: Sequence[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(p) for p in prefixes)
    ids = torch.full((len(prefixes), P), pad, dtype=torch.long)
    mask = torch.zeros(len(prefixes), P, dtype=torch.long)
    for i, p in enumerate(prefixes):
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def diffusion_samples(em: EvalModel, prefixes: Sequence[list[int]], steps: int, cfg: GenerationConfig) -> list[Sample]:
    """One sample per prefix from the diffusion sampler (``cfg.sampling``) with ``steps`` forward passes."""
    device = next(em.model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    settings = cfg.sampling.replace(steps=steps).check()
    eos = em.tokenizer.eos_token_id
    pad = em.tokenizer.pad_token_id if em.tokenizer.pad_token_id is not None else eos
    out = []
    bar = _bar(len(prefixes), f"genppl sample {em.label} ({steps} steps)")
    for i in range(0, len(prefixes), cfg.batch_size):
        chunk = prefixes[i : i + cfg.batch_size]
        ids, mask = _left_pad(chunk, pad, device)
        seq = generate(
            em.model, ids, settings, attention_mask=mask, mask_id=em.mask_id, shift=em.shift, eos_id=eos, generator=gen
        )
        for p, row in zip(chunk, seq[:, ids.shape[1] :].tolist()):
            out.append(Sample(list(p), *_cut(row, eos)))
        bar.update(len(chunk))
    bar.close()
    return out


def _bar(total: int, desc: str):
    """The bar (with ETA) of one long stage: sampling, the judge's own samples, scoring."""
    return progress(total=total, desc=desc, unit="sample", dynamic_ncols=True, mininterval=1.0)


@torch.no_grad()
def judge_samples(
    judge: EvalModel, prefixes: Sequence[list[int]], *, gen_length: int, sampled: bool, batch_size: int, seed: int = 0
) -> list[Sample]:
    """The AR judge's own continuations (greedy, or sampled at temperature 1) of judge-token prefixes."""
    device = next(judge.model.parameters()).device
    tok = judge.tokenizer
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    torch.manual_seed(seed)
    out = []
    bar = _bar(len(prefixes), f"genppl judge {'sampled' if sampled else 'greedy'} reference")
    for i in range(0, len(prefixes), batch_size):
        chunk = prefixes[i : i + batch_size]
        ids, mask = _left_pad(chunk, pad, device)
        kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0) if sampled else dict(do_sample=False)
        seq = judge.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=gen_length,
            min_new_tokens=1,
            pad_token_id=pad,
            eos_token_id=eos,
            **kw,
        )
        for p, row in zip(chunk, seq[:, ids.shape[1] :].tolist()):
            out.append(Sample(list(p), *_cut(row, eos)))
        bar.update(len(chunk))
    bar.close()
    return out


# --------------------------------------------------------------------------- metrics


def unigram_entropy(ids: Sequence[int]) -> float:
    """Entropy (nats) of the token frequencies of one sample; 0 for an empty one."""
    n = len(ids)
    if n == 0:
        return 0.0
    return -sum(c / n * math.log(c / n) for c in Counter(ids).values())


def _judge_ids(judge_tok, text: str) -> list[int]:
    return judge_tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def judge_nll(
    judge: EvalModel, contexts: Sequence[list[int]], targets: Sequence[list[int]], batch_size: int
) -> list[tuple[float, int]]:
    """(sum of -log p(target tokens | context + earlier targets), number of targets) per pair, judge ids."""
    device = next(judge.model.parameters()).device
    pad = judge.tokenizer.pad_token_id if judge.tokenizer.pad_token_id is not None else judge.tokenizer.eos_token_id
    out = []
    bar = _bar(len(contexts), f"genppl score by {judge.label}")
    for i in range(0, len(contexts), batch_size):
        ctx, tgt = contexts[i : i + batch_size], targets[i : i + batch_size]
        seqs = [c + t for c, t in zip(ctx, tgt)]
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), pad, dtype=torch.long)
        mask = torch.zeros(len(seqs), L, dtype=torch.long)
        scored = torch.zeros(len(seqs), L, dtype=torch.bool)
        for j, (c, s) in enumerate(zip(ctx, seqs)):  # right padding: positions start at 0 for everyone
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
            scored[j, len(c) : len(s)] = True
        ids, mask = ids.to(device), mask.to(device)
        logp = judge.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
        tok_lp = logp.gather(-1, ids[:, 1:, None])[..., 0]
        sc = scored[:, 1:].to(device)
        nll = -(tok_lp * sc).sum(-1)
        out += [(float(v), int(n)) for v, n in zip(nll.tolist(), sc.sum(-1).tolist())]
        bar.update(len(seqs))
    bar.close()
    return out


def score(
    samples: Sequence[Sample],
    gen_tok,
    judge: EvalModel,
    *,
    label: str,
    steps: int | None,
    code: bool,
    batch_size: int,
    judge_prefixes: Sequence[list[int]] | None = None,
    compile_prefix: bool = True,
    details: list[dict] | None = None,
) -> GenRow:
    """The row of metrics for ``samples`` (generator token ids, decoded with ``gen_tok``).

    ``judge_prefixes``: the samples' prefixes already in judge ids (for the judge's own samples);
    otherwise the prefix text is re-tokenised, and an empty prefix becomes the judge's EOS.
    ``details``: a list that gets one dict per sample (nll, scored tokens, entropy, compiles).
    """
    jt = judge.tokenizer
    judge_start = [start_token(jt)]
    contexts, targets, valid = [], [], []
    for i, s in enumerate(samples):
        prefix_text = gen_tok.decode(s.prefix, skip_special_tokens=True)
        text = gen_tok.decode(s.ids, skip_special_tokens=True)
        if judge_prefixes is not None:
            ctx = list(judge_prefixes[i])
        else:
            ctx = _judge_ids(jt, prefix_text) if prefix_text else []
        contexts.append(ctx or judge_start)
        targets.append(_judge_ids(jt, text) + ([jt.eos_token_id] if s.ended and jt.eos_token_id is not None else []))
        if code:
            valid.append(syntax_valid((prefix_text if compile_prefix else "") + text))
    nll = judge_nll(judge, contexts, targets, batch_size)
    total, n_tok = sum(v for v, _ in nll), sum(n for _, n in nll)
    entropies = [unigram_entropy(s.ids) for s in samples]
    ended = sum(s.ended for s in samples)
    if details is not None:
        details += [
            {"nll": v, "tokens": t, "entropy": e, **({"compiles": c} if code else {})}
            for (v, t), e, c in zip(nll, entropies, valid if code else [None] * len(samples))
        ]
    return GenRow(
        label=label,
        steps=steps,
        n=len(samples),
        gen_ppl=math.exp(min(total / n_tok, 700.0)) if n_tok else math.nan,
        entropy=sum(entropies) / max(len(samples), 1),
        scored_tokens=n_tok,
        syntax_valid=(sum(valid) / len(valid)) if code and valid else None,
        ended=ended / max(len(samples), 1),
        gen_ppl_ci=gen_ppl_ci([v for v, _ in nll], [t for _, t in nll]),
        entropy_ci=bootstrap_ci(entropies),
        syntax_valid_ci=wilson(sum(valid), len(valid)) if code and valid else None,
        ended_ci=wilson(ended, len(samples)),
    )


def reference_rows(
    judge: EvalModel,
    gen_tok,
    prefixes: Sequence[list[int]],
    *,
    gen_length: int,
    code: bool,
    batch_size: int,
    seed: int = 0,
    compile_prefix: bool = True,
) -> list[GenRow]:
    """The AR judge's greedy and sampled continuations of the same prefixes, scored like the others."""
    jt = judge.tokenizer
    start = [start_token(jt)]
    texts = [gen_tok.decode(p, skip_special_tokens=True) for p in prefixes]
    jp = [(_judge_ids(jt, t) if t else []) or start for t in texts]
    rows = []
    for sampled in (False, True):
        samples = judge_samples(judge, jp, gen_length=gen_length, sampled=sampled, batch_size=batch_size, seed=seed)
        # The judge's samples are in judge ids: score them with the judge's tokenizer as the decoder.
        label = f"{judge.label} AR {'sampled' if sampled else 'greedy'}"
        stripped = [Sample([], s.ids, s.ended) for s in samples]
        row = score(stripped, jt, judge, label=label, steps=None, code=False, batch_size=batch_size, judge_prefixes=jp)
        if code:
            compiles = sum(
                syntax_valid((t if compile_prefix else "") + jt.decode(s.ids, skip_special_tokens=True))
                for t, s in zip(texts, samples)
            )
            row.syntax_valid, row.syntax_valid_ci = compiles / len(samples), wilson(compiles, len(samples))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- outputs


def markdown_table(rows: Sequence[GenRow], title: str = "") -> str:
    """The genppl table; each metric as 'value [low, high]', its 95% interval over the samples."""
    code = any(r.syntax_valid is not None for r in rows)
    head = ["model", "steps", "n", "gen-PPL (95% CI)", "entropy (95% CI)"]
    head += (["compiles (95% CI)"] if code else []) + ["ended (EOS) (95% CI)"]
    lines = ([f"# {title}", ""] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.label,
            "AR" if r.steps is None else str(r.steps),
            str(r.n),
            fmt_value(r.gen_ppl, r.gen_ppl_ci, ".2f"),
            fmt_value(r.entropy, r.entropy_ci, ".3f"),
        ]
        if code:
            cells.append(fmt_rate(r.syntax_valid, r.syntax_valid_ci))
        cells.append(fmt_rate(r.ended, r.ended_ci, digits=0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[GenRow], path: str | Path, title: str = "") -> Path:
    """gen-PPL (log scale, left) and entropy (right) against steps, each with its shaded 95% interval;
    AR reference rows as horizontal lines over their interval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    swept = [r for r in rows if r.steps is not None]
    labels = list(dict.fromkeys(r.label for r in swept))

    def band(r: GenRow, key: str) -> tuple[float, float]:
        return getattr(r, f"{key}_ci") or (getattr(r, key),) * 2

    for i, label in enumerate(labels):
        pts = sorted((r for r in swept if r.label == label), key=lambda r: r.steps)
        for ax, key in zip(axes, ("gen_ppl", "entropy")):
            xs, ci = [r.steps for r in pts], [band(r, key) for r in pts]
            ax.fill_between(xs, [c[0] for c in ci], [c[1] for c in ci], color=f"C{i}", alpha=0.15, linewidth=0)
            ax.plot(xs, [getattr(r, key) for r in pts], "o-", color=f"C{i}", label=label)
    for j, r in enumerate(r for r in rows if r.steps is None):
        for ax, key in zip(axes, ("gen_ppl", "entropy")):
            colour = f"C{len(labels) + j}"
            lo, hi = band(r, key)
            ax.axhspan(lo, hi, color=colour, alpha=0.08, linewidth=0)
            ax.axhline(getattr(r, key), color=colour, linestyle=":", label=r.label)
    steps = sorted({r.steps for r in swept})
    names = ("gen-PPL under the AR judge (lower is better)", "unigram entropy per sample (nats)")
    for ax, name in zip(axes, (f"{n}\n(shaded: 95% bootstrap interval over samples)" for n in names)):
        if steps:
            ax.set_xscale("log", base=2)
            ax.set_xticks(steps, [str(s) for s in steps])
            ax.minorticks_off()
        ax.set_xlabel("denoising steps")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def write_outputs(rows: Sequence[GenRow], out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """genppl.json, genppl.md and genppl.png under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "genppl.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    (out / "genppl.md").write_text(markdown_table(rows, title))
    return {"json": out / "genppl.json", "md": out / "genppl.md", "png": plot(rows, out / "genppl.png", title)}


def save_samples(
    path: Path,
    label: str,
    steps: int | None,
    samples: Sequence[Sample],
    tok,
    details: Sequence[dict] | None = None,
    sampler: dict | None = None,
) -> None:
    """Append decoded samples (for reading; never executed), each with its index among the prompts,
    its scores (``details`` from `score`: the judge's NLL and scored tokens, entropy, compiles) and
    the sampler settings, so that two runs can be paired prompt by prompt (`xdlm-tune compare`)."""
    with path.open("a") as f:
        for i, s in enumerate(samples):
            row = {
                "label": label,
                "steps": steps,
                "index": i,
                "prefix": tok.decode(s.prefix, skip_special_tokens=True),
                "text": tok.decode(s.ids, skip_special_tokens=True),
                "ended": s.ended,
                **(details[i] if details is not None else {}),
            }
            if sampler is not None:
                row["sampler"] = sampler
            f.write(json.dumps(row) + "\n")
