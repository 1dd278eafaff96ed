"""The prefix LM reads the answer at [MASK], whatever the padding of the batch, through the tied embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from benchmarks.lab import model as lm  # noqa: E402
from tests.lab.helpers import make_tiny_base  # noqa: E402


@pytest.fixture(scope="module")
def prefix_lm(tmp_path_factory: pytest.TempPathFactory) -> lm.PrefixLM:
    base = make_tiny_base(tmp_path_factory.mktemp("base"))
    torch.manual_seed(0)
    towers = {m: lm.new_tower(m) for m in lm.FEATURE_SHAPES}
    return lm.PrefixLM(lm.load_bert(Path(base)), lm.load_tokenizer(Path(base)), towers).eval()


def test_answer_index_matches_the_question() -> None:
    assert [lm.answer_index("digit", d) for d in (0, 7)] == [0, 7]
    assert [lm.answer_index("parity", d) for d in (4, 7)] == [0, 1]  # even, odd
    assert [lm.answer_index("big", d) for d in (5, 6)] == [0, 1]  # "bigger than five": 5 is not
    assert all(len(lm.ANSWERS[q]) == {"digit": 10, "parity": 2, "big": 2}[q] for q in lm.QUESTIONS)


@torch.no_grad()
def test_padding_does_not_change_the_answer(prefix_lm: lm.PrefixLM) -> None:
    x = torch.rand(2, *lm.FEATURE_SHAPES["image"])
    short, long = "even or odd?", "is this digit odd or even?"
    together = prefix_lm([("image", x)], [short, long])
    alone = torch.cat([prefix_lm([("image", x[:1])], [short]), prefix_lm([("image", x[1:])], [long])])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_prefix_inputs_change_the_answer_and_scores_use_tied_embeddings(prefix_lm: lm.PrefixLM) -> None:
    a, b = torch.rand(1, 128, 3), torch.rand(1, 128, 3) * 2 - 1
    ha = prefix_lm([("points", a)], ["which digit is this?"])
    hb = prefix_lm([("points", b)], ["which digit is this?"])
    assert not torch.allclose(ha, hb)
    both = prefix_lm([("points", a), ("audio", torch.rand(1, 32, 24))], ["which number do all inputs show?"])
    assert both.shape == (1, lm.HIDDEN)
    emb = prefix_lm.word_embeddings()[prefix_lm.answer_ids("parity")]
    torch.testing.assert_close(prefix_lm.scores(ha, "parity"), ha @ emb.T)


def test_voxelizer_counts_every_point_once() -> None:
    pts = torch.rand(3, 128, 3) * 2 - 1
    vox = lm.Voxelizer()(pts)
    assert vox.shape == (3, lm.Voxelizer.GRID ** 3)
    torch.testing.assert_close(vox.sum(dim=1), torch.full((3,), float(lm.Voxelizer.GRID ** 3)))
    # permuting the points changes nothing
    torch.testing.assert_close(lm.Voxelizer()(pts[:, torch.randperm(128)]), vox)


@torch.no_grad()
def test_token_lora_acts_on_its_own_soft_tokens_only(prefix_lm: lm.PrefixLM) -> None:
    """DAMC-style: the kept LoRA of the audio tower changes the query projection exactly at the audio soft
    tokens (the second input: positions 1 + 4 … 1 + 8), by exactly its update, and nowhere else."""
    torch.manual_seed(1)
    shapes = lm.target_shapes(prefix_lm.bert)
    assert len(shapes) == 6 * 2  # six linear layers per block of the tiny two-block BERT
    audio = lm.ModalityTower("audio", shapes)
    audio.load_state_dict(prefix_lm.towers["audio"].state_dict(), strict=False)
    for b in audio.token_lora.B.values():
        b.normal_()
    with_lora = lm.PrefixLM(prefix_lm.bert, prefix_lm.tokenizer, {"image": prefix_lm.towers["image"], "audio": audio})
    layer = "encoder.layer.0.attention.self.query"
    seen = []
    handle = dict(with_lora.bert.named_modules())[layer].register_forward_hook(lambda m, a, o: seen.append((a[0], o)))
    inputs = [("image", torch.rand(2, 64)), ("audio", torch.rand(2, 32, 24))]
    with_lora(inputs, ["which number do all inputs show?"] * 2)
    prefix_lm(inputs, ["which number do all inputs show?"] * 2)
    handle.remove()
    (x, changed), (_, plain) = seen[-2], seen[-1]  # the hook that adds the update runs before this one
    diff = (changed - plain).abs().sum(dim=(0, 2))
    first, last = 1 + lm.SOFT_TOKENS, 1 + 2 * lm.SOFT_TOKENS
    assert (diff[first:last] > 0).all() and diff[:first].eq(0).all() and diff[last:].eq(0).all()
    torch.testing.assert_close(changed[:, first:last] - plain[:, first:last],
                               audio.token_lora.delta(layer, x[:, first:last]))


@torch.no_grad()
def test_text_tower_is_a_prompt_then_the_expression_word_embeddings(prefix_lm: lm.PrefixLM) -> None:
    """The text specialist's input goes through the language model's own embeddings (nothing in the tower can
    compute the answer): the prefix is the learned prompt, then exactly the three words' embeddings."""
    tower = prefix_lm.towers[lm.TEXT]
    assert isinstance(tower, lm.TextTower) and [n for n, _ in tower.named_parameters()] == ["prompt"]
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    emb = prefix_lm.bert.get_input_embeddings()
    prefix = tower(ids, emb)
    assert prefix.shape == (2, lm.SOFT_TOKENS, lm.HIDDEN)
    torch.testing.assert_close(prefix[:, 1:], emb(ids))
    a = prefix_lm([(lm.TEXT, ids[:1])], ["which number is it?"])
    b = prefix_lm([(lm.TEXT, ids[1:])], ["which number is it?"])
    assert not torch.allclose(a, b)
