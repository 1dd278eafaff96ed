"""Retention is 1 for the base itself and drops when the decoder's weights move."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from benchmarks.lab import model as lm  # noqa: E402
from benchmarks.lab import retention  # noqa: E402
from tests.lab.helpers import make_tiny_base  # noqa: E402


def test_retention_of_the_base_is_one_and_drops_under_perturbation(tmp_path: Path) -> None:
    base = make_tiny_base(tmp_path / "base")
    tok = lm.load_tokenizer(base)
    texts = ["is the number even or odd?", "which digit is this?", "name the digit."]
    ref = retention.embed(lm.load_bert(base), tok, texts)
    torch.testing.assert_close(ref.norm(dim=1), torch.ones(3))
    same = lm.PrefixLM(lm.load_bert(base), tok, {})
    assert retention.retention(ref, same, texts) == pytest.approx(1.0, abs=1e-6)
    moved = lm.PrefixLM(lm.load_bert(base), tok, {})
    with torch.no_grad():
        for name, p in moved.bert.named_parameters():
            if name.endswith("intermediate.dense.weight"):
                p.add_(torch.randn_like(p) * p.std() * 2)
    assert retention.retention(ref, moved, texts) < 0.999


def test_sentences_are_real_english_of_bounded_length() -> None:
    if not retention.TEXT.is_file():
        pytest.skip(f"{retention.TEXT} not present")
    got = retention.sentences(50)
    assert len(got) == 50 and all(6 <= len(s.split()) <= 40 for s in got)
    assert any("software" in s.lower() for s in got)
