"""Generate the tiny Llama-shaped checkpoints the example recipes in this folder merge.

    python recipes/examples/generate.py        # writes recipes/examples/checkpoints/ (git-ignored)

A base, three PEFT LoRA specialists (vision, audio, point) and two full fine-tunes, one of which carries
a modality projector that the recipes keep per specialist. Seeded: the same bytes every time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.fixtures.tiny import HIDDEN, make_base, make_full_specialist, make_lora_specialist  # noqa: E402


def main() -> None:
    out = HERE / "checkpoints"
    base = make_base(out / "base", layers=4)
    for seed, name in enumerate(("vision-lora", "audio-lora", "point-lora"), start=1):
        make_lora_specialist(out / name, seed=seed, layers=4, r=8, alpha=16)
    projector = {"model.mm_projector.weight": torch.randn(HIDDEN, 24, generator=torch.Generator().manual_seed(7))}
    make_full_specialist(out / "vision-full", base, seed=11, extra=projector)
    make_full_specialist(out / "audio-full", base, seed=12)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
