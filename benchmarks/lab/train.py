"""Train one LLaVA-style specialist (tower + LoRA on the shared MiniLM) and export it as a PEFT adapter.

The adapter folder is what `ssam merge` reads: adapter_config.json + adapter_model.safetensors holding the
LoRA factors (keys base_model.model.<base weight path>.lora_{A,B}.weight) and the tower's tensors under
base_model.model.modality.<modality>.*, which a recipe keeps per specialist (modules.keep: ["modality.*"]).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

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
    rank: int = lm.LORA_RANK
    alpha: int = lm.LORA_ALPHA


def cache_key(cfg: TrainConfig, datas: Sequence[ModalityData]) -> str:
    """Content hash of everything a trained model depends on: the config, the training data (bytes of every
    array) and the source of the training code, so a cached specialist is reused only when it would be
    retrained identically."""
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for d in datas:
        h.update(d.modality.encode())
        for arr in (d.train.x, d.train.y):
            h.update(np.ascontiguousarray(arr).tobytes())
    here = Path(__file__).resolve().parent
    for source in ("train.py", "model.py"):
        h.update((here / source).read_bytes())
    return h.hexdigest()[:16]


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
    """LoRA (rank cfg.rank on the six linear layers of every block) + a fresh tower, trained jointly."""
    return train_joint(base, [data], cfg)


def train_joint(base: Path, datas: Sequence[ModalityData], cfg: TrainConfig) -> lm.PrefixLM:
    """One LoRA and a fresh tower per modality, trained together: every step takes a batch of cfg.batch / len(datas)
    examples of every modality (one modality: a specialist; all of them: the jointly trained reference)."""
    from peft import LoraConfig, get_peft_model

    seed_everything(cfg.seed)
    plain = lm.load_bert(base)
    shapes = lm.target_shapes(plain) if cfg.token_lora else None
    bert = get_peft_model(plain, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha,
                                            target_modules=lm.LORA_TARGETS, lora_dropout=0.0))
    model = lm.PrefixLM(bert, lm.load_tokenizer(base), {d.modality: lm.new_tower(d.modality, shapes) for d in datas})
    # A training-only digit head on each tower's features (LLaVA aligns its projector in a stage of its own;
    # this does it in the same steps): without it the point tower stayed near chance in the CPU budget. The text
    # tower has no features: its skill is in the LoRA.
    probes = {d.modality: torch.nn.Linear(lm.FEATURE, 10) for d in datas if d.modality != lm.TEXT}
    lora = [p for p in model.bert.parameters() if p.requires_grad]
    groups = [{"params": lora, "lr": cfg.lr},
              {"params": [*model.towers.parameters(), *(q for p in probes.values() for q in p.parameters())],
               "lr": cfg.tower_lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[cfg.lr, cfg.tower_lr], total_steps=cfg.steps,
                                                pct_start=0.1)
    rng = np.random.default_rng(cfg.seed)
    batch = max(1, cfg.batch // len(datas))
    model.train()
    for _ in range(cfg.steps):
        loss = torch.zeros(())
        for d in datas:
            x_all, y_all = torch.from_numpy(d.train.x), d.train.y
            idx = rng.integers(0, len(y_all), batch)
            types, texts = question_batch(y_all[idx], rng, phrasings=-1)
            loss = loss + loss_on(model, d.modality, x_all[idx], y_all[idx], types, texts)
            if d.modality in probes:
                feats = model.towers[d.modality].encoder(x_all[idx])
                loss = loss + torch.nn.functional.cross_entropy(probes[d.modality](feats), torch.from_numpy(y_all[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def export_specialist(bert, towers, folder: Path, base_name: str = "all-MiniLM-L6-v2") -> None:
    """Write the PEFT adapter folder of a LoRA-wrapped `bert` and its tower(s) (float32 safetensors); the LoRA's
    rank and alpha are read from the PEFT model. Written under a temporary name and renamed, so a cached folder
    is always complete."""
    from peft import get_peft_model_state_dict

    towers = list(towers.values()) if isinstance(towers, dict) else [towers]
    lora_cfg = bert.peft_config["default"]
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in get_peft_model_state_dict(bert).items()}
    for tower in towers:
        for k, v in tower.state_dict().items():
            tensors[f"{PEFT_PREFIX}{lm.tower_prefix(tower.modality)}{k}"] = v.detach().contiguous().clone()
    modality = towers[0].modality if len(towers) == 1 else "joint"
    save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt", "modality": modality})
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_name,
        "r": lora_cfg.r, "lora_alpha": lora_cfg.lora_alpha, "target_modules": lm.LORA_TARGETS,
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "modules_to_save": None, "inference_mode": True,
    }
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)


def timed_train(base: Path, datas: Sequence[ModalityData], cfg: TrainConfig, out: Path) -> float:
    """Train (one modality: a specialist; several: the joint model) and export; return the wall seconds."""
    t0 = time.perf_counter()
    model = train_joint(base, list(datas), cfg)
    export_specialist(model.bert, dict(model.towers), out)
    return time.perf_counter() - t0
