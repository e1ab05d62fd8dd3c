"""`xdlm-tune eval --check-invariance`: the samples do not depend on how the run was batched or cached.

Each check regenerates every problem's answer at the run's first step budget and compares the
answer token ids (all ``gen_length`` of them, before decoding) with a reference: the same
settings, uncached, one prompt per sampler call (no padding, no neighbours).

* ``batch 8``: eight prompts per call, left-padded to the longest. Claimed at temperature 0
  (no noise: a row sees only its own tokens, padding is masked and positions come from the
  attention mask). Not claimed at temperature > 0: one ``torch.Generator`` per call draws the
  noise for the whole [B, L, V] batch at once, so a row's draws depend on its place in the batch
  and on B (the check still runs and says whether they happened to agree).
* ``cache=prefix`` / ``cache=dual`` with ``refresh_every=1`` at batch 8 against the uncached
  sampler at batch 8 (at temperature 0 also against the reference): claimed exact at every
  temperature, since every step is then a full pass and the noise is drawn the same way.

A claimed invariance that fails is a bug (the command exits 1); the result goes to
invariance.json and into summary.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from .harness import EvalModel, GenerationConfig, diffusion_answer_ids
from .tasks import Problem

FILE = "invariance.json"
BATCH = 8


@dataclass
class Check:
    """One invariance: ``variant`` against ``reference``; ``claimed``: the sampler promises it."""

    name: str
    variant: str
    reference: str
    claimed: bool
    identical: bool
    differing: list[str] = field(default_factory=list)  # task ids whose answers differ
    note: str = ""


def _padded(em: EvalModel, problems: Sequence[Problem], batch: int) -> int:
    """How many prompts get left padding at this batch size (runs are in order, by the harness)."""
    from ..model.forward_args import accepts

    if not accepts(em.model, "position_ids"):
        return 0  # grouped by prompt length: never padded
    lengths = [len(em.tokenizer(p.prompt, add_special_tokens=p.special_tokens)["input_ids"]) for p in problems]
    return sum(n < max(lengths[i - i % batch : i - i % batch + batch]) for i, n in enumerate(lengths))


def check_invariance(em: EvalModel, problems: Sequence[Problem], steps: int, cfg: GenerationConfig) -> list[Check]:
    """Run every check for ``em`` on ``problems`` at ``steps`` (see the module docstring)."""
    base = cfg.sampling.replace(cache="none", refresh="step", refresh_every=None)
    greedy = base.temperature == 0
    ids = [p.task_id for p in problems]

    def answers(batch: int, **changes):
        c = GenerationConfig(sampling=base.replace(**changes), batch_size=batch, seed=cfg.seed)
        return diffusion_answer_ids(em, problems, steps, c)[0]

    def diff(a, b) -> list[str]:
        return [t for t, x, y in zip(ids, a, b) if x != y]

    ref = answers(1)
    wide = answers(BATCH)
    checks = []
    differing = diff(ref, wide)
    padded = _padded(em, problems, BATCH)
    checks.append(
        Check(
            name="batch size",
            variant=f"batch {BATCH} (left padding: {padded} of {len(problems)} prompts padded)",
            reference="batch 1",
            claimed=greedy,
            identical=not differing,
            differing=differing,
            note=""
            if greedy
            else f"temperature {base.temperature}: one generator per sampler call, so the noise a row draws "
            "depends on its place in the batch",
        )
    )
    for cache in ("prefix", "dual"):
        cached = answers(BATCH, cache=cache, refresh_every=1)
        against = ref if greedy else wide
        differing = diff(against, cached)
        checks.append(
            Check(
                name=f"cache={cache}",
                variant=f"cache={cache} refresh_every=1, batch {BATCH}",
                reference="uncached, batch 1" if greedy else f"uncached, batch {BATCH}",
                claimed=True,
                identical=not differing,
                differing=differing,
            )
        )
    return checks


def write(checks: Sequence[Check], out_dir: str | Path, *, steps: int, temperature: float, seed: int) -> Path:
    path = Path(out_dir) / FILE
    body = {"steps": steps, "temperature": temperature, "seed": seed, "checks": [asdict(c) for c in checks]}
    path.write_text(json.dumps(body, indent=2))
    return path


def summary_section(out_dir: str | Path) -> str:
    """The summary.md paragraph: which invariances were checked for this run, and how they came out."""
    path = Path(out_dir) / FILE
    if not path.is_file():
        return (
            "Invariances: not checked for this run (`xdlm-tune eval --check-invariance` checks batch size, "
            "left padding and the exact cache settings).\n"
        )
    body = json.loads(path.read_text())
    lines = [
        f"Invariances checked (answer token ids at {body['steps']} steps, temperature {body['temperature']}, "
        f"seed {body['seed']}):",
        "",
    ]
    for c in body["checks"]:
        verdict = "identical" if c["identical"] else f"DIFFER on {len(c['differing'])} ({', '.join(c['differing'])})"
        claim = "" if c["claimed"] else " (not claimed" + (f": {c['note']}" if c["note"] else "") + ")"
        lines.append(f"* {c['variant']} vs {c['reference']}: {verdict}{claim}")
    return "\n".join(lines) + "\n"


def failed(checks: Sequence[Check]) -> list[Check]:
    """The claimed invariances that do not hold."""
    return [c for c in checks if c.claimed and not c.identical]
