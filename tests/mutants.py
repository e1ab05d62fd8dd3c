"""Mutation check: plant realistic one-line bugs, one at a time, and confirm a fast test fails on each.

    python tests/mutants.py            # every mutant; exit 1 on a survivor or a stale old text
    python tests/mutants.py -k cache   # the mutants whose name contains "cache"
    python tests/mutants.py --list     # names, files and selections only
    python tests/mutants.py -v         # also how each killed mutant failed
    python tests/mutants.py -k budget --against "tests/test_sampler_budget.py -k hand"  # other tests

Each mutant is (name, file, old text, new text, test selection). The old text must occur exactly
once in the file (a refactor that moves it makes the script fail loudly: update the entry). The
tree is copied to a temporary folder once; each mutant is applied there, its selection is run
with pytest (PYTHONPATH and cwd at the copy), and the file is restored. The working tree is never
touched. First every selection runs on the unmutated copy: a mutant only counts as killed when
its tests pass without it. Selections are fast-suite tests (no ``slow`` mark).

Not a test module: pytest collects ``test_*.py`` only (setup.cfg sets no other python_files).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "build", "dist", "*.egg-info")


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


M = Mutant
EXPORT_DEFAULTS = "tests/test_export.py::test_export_samples_with_the_recipes_eval_settings_by_default"
CONTRACT = "tests/test_sampler_contract.py::test_every_surface_samples_with_the_recipe_settings"
CONTRACT_KW = "tests/test_sampler_contract.py::test_diffusion_generate_keywords_are_replace_with_the_dream_aliases"
MUTANTS = [
    # --- the four the first mutation round let through (issue 24)
    M(
        "held-rewrite-refresh",
        "xdlm_tune/sampling/generate.py",
        "bool(rewrite[:, : b.n_held].any())",
        "bool(rewrite[:, b.n_held :].any())",
        ("tests/test_sampling_cache.py::test_every_rewrite_of_a_held_position_is_followed_by_a_full_pass",),
    ),
    M(
        "resume-without-rng",
        "xdlm_tune/train/loop.py",
        "state = read_state(resume_from, rank, world)",
        "state = read_state(resume_from, rank, world, restore_rng=False)",
        ("tests/test_train.py::test_resume_with_lora_dropout_matches_the_uninterrupted_run",),
    ),
    M(
        "revision-budget-float64",
        "xdlm_tune/sampling/rules.py",
        "acc = (reveals.cumsum(0).to(torch.float32) * k / (1 - k)).to(torch.long)",
        "acc = (reveals.cumsum(0).to(torch.float64) * k / (1 - k)).to(torch.long)",
        ("tests/test_sampler_budget.py::test_revision_budget_is_the_authors_float32_rule_where_float64_differs",),
    ),
    M(
        "one-sided-sliding-window",
        "xdlm_tune/model/bidirectional.py",
        "allowed & ((pos[:, None] - pos[None, :]).abs() < window)",
        "allowed & ((pos[:, None] - pos[None, :]) < window)",
        ("tests/test_model_bidirectional.py::test_annealed_mask_keeps_the_window_on_both_sides",),
    ),
    # --- weak spots the first round caught only incidentally
    M(
        "truncate-drops-the-last-character",
        "xdlm_tune/evaluation/extract.py",
        "if i >= 0), default=len(text))",
        "if i >= 0), default=len(text) - 1)",
        ("tests/test_tasks.py::test_extraction_of_generations_without_a_final_newline",),
    ),
    M(
        "mbpp-first-assert-only",
        "xdlm_tune/evaluation/tasks.py",
        'asserts = list(r["test_list"]) + (',
        'asserts = list(r["test_list"][:1]) + (',
        ("tests/test_tasks.py::test_every_mbpp_assert_counts_in_every_format",),
    ),
    M(
        "mbpp-lm-eval-two-asserts",
        "xdlm_tune/evaluation/tasks.py",
        '"\\n".join(asserts[:3]) + "\\n"',
        '"\\n".join(asserts[:2]) + "\\n"',
        ("tests/test_tasks.py::test_every_mbpp_assert_counts_in_every_format",),
    ),
    M(
        "conversion-left-causal",
        "xdlm_tune/model/bidirectional.py",
        "    config.is_causal = False\n",
        "    config.is_causal = True\n",
        ("tests/test_model_bidirectional.py::test_conversion_makes_every_layer_see_the_future_at_every_position",),
    ),
    # --- found here: the KV cache under threshold decoding, the export's generation settings
    M(
        "cache-stays-stale-after-a-refresh",
        "xdlm_tune/sampling/generate.py",
        "            b.stale = False\n",
        "            pass\n",
        ("tests/test_sampling_cache.py::test_every_rewrite_of_a_held_position_is_followed_by_a_full_pass",),
    ),
    M(
        "threshold-finished-row-still-revises",
        "xdlm_tune/sampling/generate.py",
        "changed &= todo[:, None]",
        "changed &= True",
        ("tests/test_sampling_cache.py::test_threshold_a_finished_row_neither_revises_nor_counts_passes",),
    ),
    M(
        "threshold-nfe-counts-finished-rows",
        "xdlm_tune/sampling/generate.py",
        "tokens, todo if cfg.threshold is not None else None",
        "tokens, None",
        ("tests/test_sampling_cache.py::test_threshold_a_finished_row_neither_revises_nor_counts_passes",),
    ),
    M(
        "revision-budget-not-carried",
        "xdlm_tune/sampling/generate.py",
        "b.carry = allowed - rewrite.sum(-1)",
        "b.carry = torch.zeros_like(b.carry)",
        ("tests/test_sampler_budget.py::test_xdlm_budget_matches_the_authors_rule_step_by_step",),
    ),
    # The field-by-field copies these once targeted (export's GENERATION_DEFAULTS, hub_model's re-defaults)
    # are gone with issue 25; the same bugs in the one-settings design:
    M(
        "export-ignores-recipe-sampler-choices",
        "xdlm_tune/export/export.py",
        "base = recipe_from_dict(recipe).sampler_settings() if recipe else SamplerSettings()",
        "base = SamplerSettings()",
        (EXPORT_DEFAULTS, CONTRACT),
    ),
    M(
        "settings-dict-drops-threshold",
        "xdlm_tune/config/sampler.py",
        "        return dataclasses.asdict(self)",
        '        return {k: v for k, v in dataclasses.asdict(self).items() if k != "threshold"}',
        (EXPORT_DEFAULTS,),
    ),
    M(
        "hub-model-ignores-stored-settings",
        "xdlm_tune/export/hub_model.py",
        "return SamplerSettings.from_dict(stored).replace(**overrides).check()",
        "return SamplerSettings().replace(**overrides).check()",
        (EXPORT_DEFAULTS,),
    ),
    M(
        "hub-model-ignores-overrides",
        "xdlm_tune/export/hub_model.py",
        "return SamplerSettings.from_dict(stored).replace(**overrides).check()",
        "return SamplerSettings.from_dict(stored).check()",
        (CONTRACT_KW,),
    ),
    M(
        "recipe-settings-drop-top-p",
        "xdlm_tune/config/schema.py",
        "picked = {name: getattr(self.eval, name) for name in self.eval.SAMPLER_FIELDS}",
        'picked = {name: getattr(self.eval, name) for name in self.eval.SAMPLER_FIELDS if name != "top_p"}',
        (EXPORT_DEFAULTS,),
    ),
    M(
        "cli-ignores-a-sampler-flag",
        "xdlm_tune/config/sampler_args.py",
        'given = {name: getattr(args, name) for name in args.sampler_flags if name != "steps"}',
        'given = {name: getattr(args, name) for name in args.sampler_flags if name not in ("steps", "cache")}',
        ("tests/test_sampler_contract.py::test_the_cli_flags_override_the_models_settings",),
    ),
    # --- prompt formats
    M(
        "opencompass-prompt-without-bos",
        "xdlm_tune/evaluation/tasks.py",
        'special_tokens=prompt_format == "opencompass",',
        "special_tokens=False,",
        ("tests/test_mbpp_formats.py::test_only_opencompass_prompts_are_encoded_with_the_tokenizers_special_tokens",),
    ),
    M(
        "harness-never-adds-special-tokens",
        "xdlm_tune/evaluation/harness.py",
        'enc = [tokenizer(p, add_special_tokens=special_tokens)["input_ids"] for p in prompts]',
        'enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]',
        ("tests/test_mbpp_formats.py::test_only_opencompass_prompts_are_encoded_with_the_tokenizers_special_tokens",),
    ),
]


def selection_passes(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, str]:
    """Run pytest on ``tests`` inside ``root``; (passed, last lines of its output)."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    env = {**os.environ, "PYTHONPATH": str(root)}
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    out = (proc.stdout + proc.stderr).strip().splitlines()
    why = [line for line in out if line.startswith("E ")][:3] + [line for line in out if line.startswith("FAILED")]
    return proc.returncode == 0, "\n".join(why or out[-3:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only the mutants whose name contains this (or one of a,b,...)")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    ap.add_argument("--against", help="run this pytest selection instead of each mutant's own (space-separated)")
    ap.add_argument("-v", "--verbose", action="store_true", help="show how each killed mutant failed")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if any(part in m.name for part in args.k.split(","))]
    if args.against:
        chosen = [replace(m, tests=tuple(args.against.split())) for m in chosen]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.file}: {m.old!r} -> {m.new!r}\n    {' '.join(m.tests)}")
        return 0
    if not chosen:
        print(f"no mutant name contains {args.k!r}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="xdlm-mutants-") as tmp:
        root = Path(tmp) / "tree"
        shutil.copytree(REPO, root, symlinks=True, ignore=SKIP)
        stale = [m for m in chosen if (root / m.file).read_text().count(m.old) != 1]
        for m in stale:
            print(f"STALE     {m.name}: {m.old!r} is not in {m.file} exactly once")
        # Selections of test paths / node ids run together; ones with options (-k ...) on their own.
        selections = list(dict.fromkeys(m.tests for m in chosen))
        merged = tuple(dict.fromkeys(t for sel in selections if all(x.startswith("tests/") for x in sel) for t in sel))
        others = [sel for sel in selections if not all(x.startswith("tests/") for x in sel)]
        for sel in ([merged] if merged else []) + others:
            ok, tail = selection_passes(root, sel, args.timeout)
            if not ok:
                print(f"the selected tests fail without any mutant ({' '.join(sel)}):\n{tail}", file=sys.stderr)
                return 1
        survivors = []
        for m in chosen:
            if m in stale:
                continue
            path = root / m.file
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new))
            start = time.perf_counter()
            try:
                passed, tail = selection_passes(root, m.tests, args.timeout)
            finally:
                path.write_text(original)
            verdict = "SURVIVED" if passed else "killed"
            print(f"{verdict:9} {m.name} ({time.perf_counter() - start:.0f} s)")
            if args.verbose and not passed:
                print("    " + tail.replace("\n", "\n    "))
            if passed:
                survivors.append(m.name)
    print(f"{len(chosen) - len(survivors) - len(stale)} killed, {len(survivors)} survived, {len(stale)} stale")
    return 1 if survivors or stale else 0


if __name__ == "__main__":
    sys.exit(main())
