"""Train one LLaVA-style specialist (tower + LoRA on the shared MiniLM) and export it as a PEFT adapter.

The adapter folder is what `ssam merge` reads: adapter_config.json + adapter_model.safetensors holding the
LoRA factors (keys base_model.model.<base weight path>.lora_{A,B}.weight) and the tower's tensors under
base_model.model.modality.<modality>.*, which a recipe keeps per specialist (modules.keep: ["modality.*"]).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from benchmarks.lab import model as lm
from benchmarks.lab.data import ModalityData

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 150
    batch: int = 16
    lr: float = 2e-3
    tower_lr: float = 2e-3
    seed: int = 0
    token_lora: bool = False  # the DAMC-style variant: also a kept LoRA on the modality's own soft tokens


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def question_batch(y: np.ndarray, rng: np.random.Generator, phrasings: int | None = None) -> tuple[list[str], list[str]]:
    """A random question type and phrasing per example (the last phrasing of each type is held out when
    `phrasings` is -1, so evaluation also sees an unseen wording)."""
    qtypes = list(lm.QUESTIONS)
    types = [qtypes[i] for i in rng.integers(0, len(qtypes), len(y))]
    texts = []
    for t in types:
        options = lm.QUESTIONS[t][:phrasings] if phrasings else lm.QUESTIONS[t]
        texts.append(options[rng.integers(0, len(options))])
    return types, texts


def loss_on(model: lm.PrefixLM, modality: str, x: torch.Tensor, y: np.ndarray, types: list[str],
            texts: list[str]) -> torch.Tensor:
    hidden = model([(modality, x)], texts)
    losses = []
    for qtype in set(types):
        rows = [i for i, t in enumerate(types) if t == qtype]
        target = torch.tensor([lm.answer_index(qtype, int(y[i])) for i in rows])
        losses.append(torch.nn.functional.cross_entropy(model.scores(hidden[rows], qtype), target, reduction="sum"))
    return torch.stack(losses).sum() / len(types)


def train_specialist(base: Path, data: ModalityData, cfg: TrainConfig) -> lm.PrefixLM:
    """LoRA (rank LORA_RANK on the six linear layers of every block) + a fresh tower, trained jointly."""
    from peft import LoraConfig, get_peft_model

    seed_everything(cfg.seed)
    plain = lm.load_bert(base)
    shapes = lm.target_shapes(plain) if cfg.token_lora else None
    bert = get_peft_model(plain, LoraConfig(r=lm.LORA_RANK, lora_alpha=lm.LORA_ALPHA,
                                            target_modules=lm.LORA_TARGETS, lora_dropout=0.0))
    model = lm.PrefixLM(bert, lm.load_tokenizer(base), {data.modality: lm.ModalityTower(data.modality, shapes)})
    tower = model.towers[data.modality]
    # A training-only digit head on the tower's features (LLaVA aligns its projector in a stage of its own;
    # this does it in the same steps): without it the point tower stayed near chance in the CPU budget.
    probe = torch.nn.Linear(lm.FEATURE, 10)
    lora = [p for p in model.bert.parameters() if p.requires_grad]
    groups = [{"params": lora, "lr": cfg.lr},
              {"params": [*tower.parameters(), *probe.parameters()], "lr": cfg.tower_lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[cfg.lr, cfg.tower_lr], total_steps=cfg.steps,
                                                pct_start=0.1)
    rng = np.random.default_rng(cfg.seed)
    x_all, y_all = torch.from_numpy(data.train.x), data.train.y
    model.train()
    for _ in range(cfg.steps):
        idx = rng.integers(0, len(y_all), cfg.batch)
        types, texts = question_batch(y_all[idx], rng, phrasings=-1)
        loss = loss_on(model, data.modality, x_all[idx], y_all[idx], types, texts)
        loss = loss + torch.nn.functional.cross_entropy(probe(tower.encoder(x_all[idx])), torch.from_numpy(y_all[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def export_specialist(bert, tower: lm.ModalityTower, folder: Path, base_name: str = "all-MiniLM-L6-v2") -> None:
    """Write the PEFT adapter folder of a LoRA-wrapped `bert` and its `tower` (float32 safetensors)."""
    from peft import get_peft_model_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in get_peft_model_state_dict(bert).items()}
    for k, v in tower.state_dict().items():
        tensors[f"{PEFT_PREFIX}{lm.tower_prefix(tower.modality)}{k}"] = v.detach().contiguous().clone()
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt", "modality": tower.modality})
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_name,
        "r": lm.LORA_RANK, "lora_alpha": lm.LORA_ALPHA, "target_modules": lm.LORA_TARGETS,
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "modules_to_save": None, "inference_mode": True,
    }
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def timed_train(base: Path, data: ModalityData, cfg: TrainConfig, out: Path) -> float:
    """Train and export; return the wall seconds it took."""
    t0 = time.perf_counter()
    model = train_specialist(base, data, cfg)
    export_specialist(model.bert, model.towers[data.modality], out)
    return time.perf_counter() - t0
