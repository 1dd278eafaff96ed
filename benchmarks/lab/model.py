"""MiniLM as a prefix LM: [CLS][modality soft tokens][question][MASK][SEP] → answer read at [MASK].

The answer is scored through the tied word embeddings (MiniLM ships no MLM head), over the question type's
candidate words. Per modality a small encoder + projector makes the soft tokens; they are kept per specialist
and never merged. The merged part is the LoRA on the shared model's linear layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

SOFT_TOKENS = 4
HIDDEN = 384
FEATURE = 256
# The six linear layers of every BERT block, matched as PEFT matches a string: fullmatch on module names.
LORA_TARGETS = r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
LORA_RANK, LORA_ALPHA = 8, 16
FEATURE_SHAPES: dict[str, tuple[int, ...]] = {"image": (64,), "audio": (32, 24), "points": (128, 3)}

QUESTIONS: dict[str, tuple[str, ...]] = {
    "digit": ("which digit is this?", "what number is shown?", "name the digit.", "which number is it?"),
    "parity": ("is the number even or odd?", "even or odd?", "is this digit odd or even?"),
    "big": ("is the number bigger than five?", "is it greater than five?", "is this digit more than five?"),
}
ANSWERS: dict[str, tuple[str, ...]] = {
    "digit": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "parity": ("even", "odd"),
    "big": ("no", "yes"),
}


def answer_index(qtype: str, digit: int) -> int:
    """The index of the right answer among ANSWERS[qtype] for a digit."""
    return {"digit": digit, "parity": digit % 2, "big": int(digit > 5)}[qtype]


class Voxelizer(nn.Module):
    """Point cloud → normalised occupancy counts on a GRID³ voxel grid over [-1.2, 1.2]³ (VoxNet-style).

    A fixed, order-invariant front end: a PointNet trained from scratch did not leave chance level within the
    lab's CPU budget (150 steps); voxel counts + an MLP reach ~95 % in the same budget."""

    GRID = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.GRID
        cell = ((x.clamp(-1.2, 1.2 - 1e-6) + 1.2) / 2.4 * g).long()  # batch × points × 3
        flat = (cell[..., 0] * g + cell[..., 1]) * g + cell[..., 2]
        counts = torch.zeros(x.shape[0], g ** 3, dtype=x.dtype, device=x.device)
        counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=x.dtype))
        return counts * (g ** 3 / x.shape[1])  # mean 1 per cell: unit-scale inputs train quickly


def make_encoder(modality: str, feature_shape: Sequence[int]) -> nn.Module:
    """A tiny modality encoder mapping one input to a FEATURE-d vector."""
    n_in = 1
    for s in feature_shape:
        n_in *= s
    front: nn.Module = nn.Flatten()
    if modality == "points":
        front, n_in = Voxelizer(), Voxelizer.GRID ** 3
    return nn.Sequential(front, nn.Linear(n_in, FEATURE), nn.GELU(), nn.Linear(FEATURE, FEATURE), nn.GELU())


class ModalityTower(nn.Module):
    """Encoder + projector of one modality: an input becomes SOFT_TOKENS embeddings of the language model."""

    def __init__(self, modality: str) -> None:
        super().__init__()
        self.modality = modality
        self.encoder = make_encoder(modality, FEATURE_SHAPES[modality])
        self.projector = nn.Linear(FEATURE, SOFT_TOKENS * HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x)).view(x.shape[0], SOFT_TOKENS, HIDDEN)


def tower_prefix(modality: str) -> str:
    """Where a tower's tensors live in a specialist adapter (and so in the merge's modality file)."""
    return f"modality.{modality}."


class PrefixLM(nn.Module):
    """The shared BERT (plain, merged, or with a trainable LoRA) with modality towers in front of it."""

    def __init__(self, bert: nn.Module, tokenizer, towers: dict[str, ModalityTower]) -> None:
        super().__init__()
        self.bert = bert
        self.towers = nn.ModuleDict(towers)
        self.tokenizer = tokenizer
        self._cls, self._sep, self._mask = (tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]"))

    def word_embeddings(self) -> torch.Tensor:
        return self.bert.get_input_embeddings().weight

    def answer_ids(self, qtype: str) -> torch.Tensor:
        return torch.tensor([self.tokenizer.token_to_id(w) for w in ANSWERS[qtype]])

    def forward(self, inputs: Sequence[tuple[str, torch.Tensor]], questions: Sequence[str]) -> torch.Tensor:
        """Hidden states at [MASK] (batch × HIDDEN) for a batch whose prefixes are the listed modality inputs,
        in order (one tensor per modality, batch-first), followed by one question per example."""
        emb = self.bert.get_input_embeddings()
        prefix = torch.cat([self.towers[m](x) for m, x in inputs], dim=1) if inputs else None
        batch = len(questions)
        ids = [[*self.tokenizer.encode(q, add_special_tokens=False).ids, self._mask, self._sep] for q in questions]
        width = max(len(i) for i in ids)
        tok = torch.zeros(batch, width, dtype=torch.long)
        att = torch.zeros(batch, width, dtype=torch.long)
        for b, row in enumerate(ids):
            tok[b, :len(row)] = torch.tensor(row)
            att[b, :len(row)] = 1
        parts = [emb(torch.full((batch, 1), self._cls))]
        if prefix is not None:
            parts.append(prefix)
        parts.append(emb(tok))
        embeds = torch.cat(parts, dim=1)
        n_pre = embeds.shape[1] - width
        mask = torch.cat([torch.ones(batch, n_pre, dtype=torch.long), att], dim=1)
        hidden = self.bert(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        where = torch.tensor([n_pre + len(row) - 2 for row in ids])
        return hidden[torch.arange(batch), where]

    def scores(self, hidden: torch.Tensor, qtype: str) -> torch.Tensor:
        """Logits over the question type's answer words, through the tied embeddings."""
        return hidden @ self.word_embeddings()[self.answer_ids(qtype)].T


def load_tokenizer(base: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def load_bert(folder: Path) -> nn.Module:
    """A BertModel from a folder with config.json + safetensors (the base, or a `format: full` merge)."""
    from transformers import BertModel

    model = BertModel.from_pretrained(str(folder), use_safetensors=True, add_pooling_layer=False)
    model.eval()
    return model
