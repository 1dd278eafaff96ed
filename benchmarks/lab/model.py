"""MiniLM as a prefix LM: [CLS][modality soft tokens][question][MASK][SEP] → answer read at [MASK].

The answer is scored through the tied word embeddings (MiniLM ships no MLM head), over the question type's
candidate words. Per modality a small encoder + projector makes the soft tokens; they are kept per specialist
and never merged. The merged part is the LoRA on the shared model's linear layers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

SOFT_TOKENS = 4
HIDDEN = 384
FEATURE = 256
# The six linear layers of every BERT block, matched as PEFT matches a string: fullmatch on module names.
LORA_TARGETS = r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
LORA_RANK, LORA_ALPHA = 8, 16  # the low-interference regime's LoRA; the interfering regime's is in run.REGIMES
TEXT = "text"  # the text-only specialist: its "input" is a 3-token arithmetic expression, read by the language model
EXPRESSION_TOKENS = 3
FEATURE_SHAPES: dict[str, tuple[int, ...]] = {"image": (64,), "audio": (32, 24), "points": (128, 3),
                                              TEXT: (EXPRESSION_TOKENS,)}

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


def target_shapes(bert: nn.Module) -> dict[str, tuple[int, int]]:
    """(out, in) of every LORA_TARGETS linear layer of a plain BertModel, by module name."""
    pattern = re.compile(LORA_TARGETS)
    return {name: (m.out_features, m.in_features) for name, m in bert.named_modules()
            if isinstance(m, nn.Linear) and pattern.fullmatch(name)}


class TokenLoRA(nn.Module):
    """DAMC-style decoupling: a LoRA on every target layer that acts only on its own modality's soft tokens.
    It lives in the tower, so a recipe keeps it per modality (never merged) while the shared LoRA is merged."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int = LORA_RANK, alpha: int = LORA_ALPHA) -> None:
        super().__init__()
        self.scale = alpha / rank
        self.A = nn.ParameterDict({_key(n): nn.Parameter(torch.randn(rank, i) / i ** 0.5) for n, (o, i) in shapes.items()})
        self.B = nn.ParameterDict({_key(n): nn.Parameter(torch.zeros(o, rank)) for n, (o, i) in shapes.items()})

    def layers(self) -> list[str]:
        return [k.replace("__", ".") for k in self.A]

    def delta(self, layer: str, x: torch.Tensor) -> torch.Tensor:
        k = _key(layer)
        return (x @ self.A[k].T) @ self.B[k].T * self.scale


def _key(layer: str) -> str:
    return layer.replace(".", "__")  # parameter names may not contain dots


class ModalityTower(nn.Module):
    """Encoder + projector of one modality: an input becomes SOFT_TOKENS embeddings of the language model; with
    `token_lora` shapes also a TokenLoRA (the DAMC-style variant)."""

    def __init__(self, modality: str, token_lora: dict[str, tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.modality = modality
        self.encoder = make_encoder(modality, FEATURE_SHAPES[modality])
        self.projector = nn.Linear(FEATURE, SOFT_TOKENS * HIDDEN)
        self.token_lora = TokenLoRA(token_lora) if token_lora else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x)).view(x.shape[0], SOFT_TOKENS, HIDDEN)


class TextTower(nn.Module):
    """The text specialist's front: a learned prompt token, then the expression's own word embeddings (the base's,
    never merged). Nothing here can do arithmetic (the prompt is the same for every input), so the skill has to
    live in the LoRA: a language-side skill, as the issue asks for."""

    def __init__(self, modality: str = TEXT) -> None:
        super().__init__()
        self.modality = modality
        self.prompt = nn.Parameter(torch.zeros(SOFT_TOKENS - EXPRESSION_TOKENS, HIDDEN))
        self.token_lora = None

    def forward(self, ids: torch.Tensor, embeddings: nn.Module) -> torch.Tensor:
        words = embeddings(ids.long())
        return torch.cat([self.prompt.expand(ids.shape[0], -1, -1), words], dim=1)


def new_tower(modality: str, token_lora: dict[str, tuple[int, int]] | None = None) -> nn.Module:
    """A fresh tower for `modality` (a TextTower for the text specialist)."""
    return TextTower() if modality == TEXT else ModalityTower(modality, token_lora)


def tower_prefix(modality: str) -> str:
    """Where a tower's tensors live in a specialist adapter (and so in the merge's modality file)."""
    return f"modality.{modality}."


class PrefixLM(nn.Module):
    """The shared BERT (plain, merged, or with a trainable LoRA) with modality towers in front of it."""

    def __init__(self, bert: nn.Module, tokenizer, towers: dict[str, nn.Module]) -> None:
        super().__init__()
        self.bert = bert
        self.towers = nn.ModuleDict(towers)
        self.tokenizer = tokenizer
        self._cls, self._sep, self._mask = (tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]"))
        self._token_masks: list[tuple[TokenLoRA, torch.Tensor]] = []  # set during forward for the hooks
        layers = {name for t in self.towers.values() if t.token_lora is not None for name in t.token_lora.layers()}
        for name, module in bert.named_modules():
            plain = name.removeprefix("base_model.model.")  # a PEFT-wrapped model during training
            if plain in layers:
                module.register_forward_hook(self._token_hook(plain))

    def _token_hook(self, layer: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            for lora, mask in self._token_masks:
                if _key(layer) in lora.A:
                    out = out + mask * lora.delta(layer, args[0])
            return out

        return hook

    def word_embeddings(self) -> torch.Tensor:
        return self.bert.get_input_embeddings().weight

    def answer_ids(self, qtype: str) -> torch.Tensor:
        return torch.tensor([self.tokenizer.token_to_id(w) for w in ANSWERS[qtype]])

    def forward(self, inputs: Sequence[tuple[str, torch.Tensor]], questions: Sequence[str]) -> torch.Tensor:
        """Hidden states at [MASK] (batch × HIDDEN) for a batch whose prefixes are the listed modality inputs,
        in order (one tensor per modality, batch-first), followed by one question per example."""
        emb = self.bert.get_input_embeddings()
        prefix = torch.cat([self.towers[m](x, emb) if m == TEXT else self.towers[m](x) for m, x in inputs],
                           dim=1) if inputs else None
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
        self._token_masks = []
        for i, (m, _) in enumerate(inputs):  # input i's soft tokens sit at 1 + i·SOFT_TOKENS, after [CLS]
            if self.towers[m].token_lora is not None:
                where = torch.zeros(1, embeds.shape[1], 1)
                where[0, 1 + i * SOFT_TOKENS:1 + (i + 1) * SOFT_TOKENS] = 1.0
                self._token_masks.append((self.towers[m].token_lora, where))
        try:
            hidden = self.bert(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        finally:
            self._token_masks = []
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
