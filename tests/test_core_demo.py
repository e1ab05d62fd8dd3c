"""`xdlm-tune demo --core` (xdlm_tune/workflows/core_demo.py), shortened: the tiny bidirectional Llama learns
(the held-out ELBO falls) and the sample comes from the library's ancestral sampler."""

from __future__ import annotations

from xdlm_tune.workflows import core_demo


def test_the_core_demo_learns_and_samples_with_the_library_sampler(monkeypatch, capsys):
    calls, real = [], core_demo.generate

    def spy(model, prompt, settings, **kwargs):
        calls.append(settings)
        return real(model, prompt, settings, **kwargs)

    monkeypatch.setattr(core_demo, "generate", spy)
    out = core_demo.main(steps=20, data_bytes=100_000)
    assert out["elbo_after"] < out["elbo_before"] - 1.0  # bits/byte; ~8 (uniform over 260 ids) at the start
    assert [(s.sampler, s.steps, s.gen_length, s.temperature) for s in calls] == [("ancestral", 32, 64, 1.0)]
    assert isinstance(out["sample"], str) and 0 < len(out["sample"]) <= 64  # 64 tokens, one per byte
    printed = capsys.readouterr().out
    assert "100,000 bytes of stdlib source" in printed and f"-> {out['elbo_after']:.3f} bits/byte" in printed
