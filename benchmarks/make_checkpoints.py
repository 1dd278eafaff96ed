"""Shape-true synthetic checkpoints for the benchmarks: Vicuna-7B-shaped LoRA adapters and dense fine-tunes.

Why synthetic: the benchmark must be rerunnable anywhere without downloading 7B models, yet the timings
only mean something at the real shapes (4096 hidden, 11008 intermediate, 32 layers, rank 128) and on
updates that look like real ones. So every update has
  * a decaying spectrum (σ_j ∝ (j+1)^-decay: float32 Gram matrices square its condition number),
  * partly shared subspaces: every other singular direction comes from a basis common to all specialists
    of that weight (mixed differently per specialist, plus a little private noise), the rest is private,
  * LoRA-like norms: ‖Δ‖_F = rel_norm · ‖W_0‖_F with W_0 ~ N(0, 0.02²) as in Llama's initialisation.
Every tensor is seeded by (seed, its name), so a 2-layer set is exactly the first 2 layers of a 32-layer set
and reruns are bit-identical. Files are written one tensor at a time (memory: one weight) and cached under
benchmarks/.cache/ (git-ignored); a finished folder carries a `.complete` stamp of its parameters.

    python benchmarks/make_checkpoints.py lora --layers 32 -n 4      # 4 PEFT adapters, ~0.64 GB each
    python benchmarks/make_checkpoints.py sparse-base --layers 32    # header-only base (no disk blocks)
    python benchmarks/make_checkpoints.py dense --layers 2 -n 4      # base + 4 full fine-tunes, shared shards
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

CODES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}  # safetensors' dtype names

CACHE = Path(__file__).resolve().parent / ".cache"
MODULES = {  # Llama module → (d_out, d_in) for hidden h and intermediate m
    "self_attn.q_proj": lambda h, m: (h, h), "self_attn.k_proj": lambda h, m: (h, h),
    "self_attn.v_proj": lambda h, m: (h, h), "self_attn.o_proj": lambda h, m: (h, h),
    "mlp.gate_proj": lambda h, m: (m, h), "mlp.up_proj": lambda h, m: (m, h), "mlp.down_proj": lambda h, m: (h, m),
}
BASE_STD = 0.02
STAMP = ".complete"


@dataclass(frozen=True)
class Shapes:
    hidden: int = 4096
    intermediate: int = 11008
    vocab: int = 32000

    def linear(self, layer: int) -> Iterator[tuple[str, tuple[int, int]]]:
        for module, shape in MODULES.items():
            yield f"model.layers.{layer}.{module}", shape(self.hidden, self.intermediate)


@dataclass(frozen=True)
class Structure:
    """How an update looks: spectrum decay, share of directions common to all specialists, relative norm."""

    decay: float = 1.5
    shared: float = 0.5
    rel_norm: float = 0.02
    private_noise: float = 0.3


def generator(seed: int, *parts: object) -> torch.Generator:
    """A generator seeded by (seed, parts): independent of generation order and of the model's depth."""
    key = ":".join(str(p) for p in (seed, *parts)).encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)


def spectrum(r: int, decay: float, norm: float) -> torch.Tensor:
    s = torch.arange(1, r + 1, dtype=torch.float64).pow(-decay)
    return (s * (norm / s.norm())).float()


def _orthonormal(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(x)[0]


def _basis(d: int, r: int, seed: int, name: str, side: str, specialist: int, s: Structure) -> torch.Tensor:
    """d × r orthonormal columns; the even columns lie near a subspace shared by every specialist."""
    n_shared = int(round(r * s.shared))
    shared = _orthonormal(torch.randn(d, max(n_shared, 1), generator=generator(seed, name, side, "shared")))
    g = generator(seed, name, side, specialist)
    mix = _orthonormal(torch.randn(shared.shape[1], shared.shape[1], generator=g))
    cols = torch.randn(d, r, generator=g)
    if n_shared:  # spread the shared directions over the spectrum, strong and weak ones alike
        idx = torch.linspace(0, r - 1, n_shared).round().long()
        cols[:, idx] = shared @ mix + (s.private_noise / d**0.5) * cols[:, idx]
    return _orthonormal(cols)


def structured_update(shape: tuple[int, int], r: int, seed: int, name: str, specialist: int,
                      s: Structure) -> tuple[torch.Tensor, torch.Tensor]:
    """(U diag σ, Vᵀ) of one specialist's update of weight `name`: d_out × r and r × d_in, float32."""
    d_out, d_in = shape
    norm = s.rel_norm * BASE_STD * (d_out * d_in) ** 0.5
    sigma = spectrum(r, s.decay, norm)
    U = _basis(d_out, r, seed, name, "U", specialist, s)
    V = _basis(d_in, r, seed, name, "V", specialist, s)
    return U * sigma, V.T.contiguous()


def lora_factors(shape: tuple[int, int], r: int, alpha: float, seed: int, name: str, specialist: int,
                 s: Structure) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's (lora_B, lora_A) with (alpha/r)·B@A = the structured update; balanced, randomly rotated factors."""
    US, Vt = structured_update(shape, r, seed, name, specialist, s)
    scale = alpha / r
    root = US.norm(dim=0).clamp_min(1e-30).sqrt()
    rot = _orthonormal(torch.randn(r, r, generator=generator(seed, name, "rot", specialist)))
    B = (US / root / scale**0.5) @ rot
    A = rot.T @ (Vt * (root * scale**0.5)[:, None] / scale)
    return B, A


# ---------------------------------------------------------------- writing helpers


def _stamp(folder: Path) -> Path:
    return folder / STAMP


def cached(folder: Path, params: dict, build: Callable[[Path], None]) -> Path:
    """Build `folder` once per parameter set: into a temp folder, then renamed; reused while the stamp matches."""
    stamp = json.dumps(params, sort_keys=True)
    if _stamp(folder).is_file() and _stamp(folder).read_text() == stamp:
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    _stamp(tmp).write_text(stamp)
    tmp.rename(folder)
    return folder


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def safetensors_header(specs: list[TensorSpec]) -> tuple[bytes, int]:
    """The safetensors header of tensors stored in this order (length prefix included) and their data size."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        header[spec.name] = {"dtype": CODES[spec.dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob, offset


def write_stream(path: Path, items: list[tuple[TensorSpec, Callable[[], torch.Tensor]]]) -> None:
    """A safetensors file written one tensor at a time (memory: one tensor), read back by safetensors itself."""
    header, _ = safetensors_header([spec for spec, _ in items])
    with open(path, "wb") as f:
        f.write(header)
        for spec, make in items:
            value = make().to(spec.dtype).contiguous()
            assert tuple(value.shape) == spec.shape, (spec.name, value.shape)
            f.write(memoryview(value.reshape(-1).view(torch.uint8).numpy()))


def llama_config(shapes: Shapes, layers: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": shapes.hidden,
            "intermediate_size": shapes.intermediate, "num_hidden_layers": layers, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": shapes.vocab, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "bos_token_id": 1, "eos_token_id": 2}


# ---------------------------------------------------------------- LoRA adapters


def make_lora(n: int, layers: int, seed: int = 0, r: int = 128, alpha: float = 256, shapes: Shapes = Shapes(),
              structure: Structure = Structure(), modules: tuple[str, ...] = tuple(MODULES)) -> list[Path]:
    """n PEFT adapters (bf16) on the first `layers` layers; returns their folders."""
    tag = f"lora-r{r}-a{alpha:g}-L{layers}-s{seed}" + ("" if set(modules) == set(MODULES) else "-" + "+".join(
        m.split(".")[-1] for m in modules))
    folders = []
    for i in range(n):
        params = {"kind": "lora", "i": i, "layers": layers, "seed": seed, "r": r, "alpha": alpha,
                  "shapes": asdict(shapes), "structure": asdict(structure), "modules": list(modules)}
        folders.append(cached(CACHE / tag / f"specialist{i}", params,
                              lambda f, i=i: _write_adapter(f, i, layers, seed, r, alpha, shapes, structure, modules)))
    return folders


def _write_adapter(folder: Path, i: int, layers: int, seed: int, r: int, alpha: float, shapes: Shapes,
                   s: Structure, modules: tuple[str, ...]) -> None:
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "lmsys/vicuna-7b-v1.5",
              "r": r, "lora_alpha": alpha, "lora_dropout": 0.05, "bias": "none", "fan_in_fan_out": False,
              "use_rslora": False, "inference_mode": True, "target_modules": sorted(m.split(".")[-1] for m in modules)}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    items: list[tuple[TensorSpec, Callable[[], torch.Tensor]]] = []
    for layer in range(layers):
        for name, shape in shapes.linear(layer):
            if name.split(".", 3)[-1] not in modules:
                continue
            memo: dict[str, torch.Tensor] = {}

            def factor(side: str, name=name, shape=shape, memo=memo) -> torch.Tensor:
                if not memo:  # B is written right after A: compute both once, hand out one, drop both after
                    memo["B"], memo["A"] = lora_factors(shape, r, alpha, seed, name, i, s)
                return memo.pop(side)

            key = f"base_model.model.{name}"
            items.append((TensorSpec(f"{key}.lora_A.weight", (r, shape[1]), torch.bfloat16), lambda f=factor: f("A")))
            items.append((TensorSpec(f"{key}.lora_B.weight", (shape[0], r), torch.bfloat16), lambda f=factor: f("B")))
    write_stream(folder / "adapter_model.safetensors", items)


# ---------------------------------------------------------------- base and dense fine-tunes


def base_tensors(shapes: Shapes, layers: int) -> list[tuple[str, tuple[int, ...]]]:
    names: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (shapes.vocab, shapes.hidden))]
    for layer in range(layers):
        names.append((f"model.layers.{layer}.input_layernorm.weight", (shapes.hidden,)))
        names.extend((f"{n}.weight", shape) for n, shape in shapes.linear(layer))
        names.append((f"model.layers.{layer}.post_attention_layernorm.weight", (shapes.hidden,)))
    names += [("model.norm.weight", (shapes.hidden,)), ("lm_head.weight", (shapes.vocab, shapes.hidden))]
    return names


def make_sparse_base(layers: int = 32, shapes: Shapes = Shapes()) -> Path:
    """A base whose header is real and whose data are holes (zeros, no disk blocks): for LoRA-output merges,
    which need the base's names and shapes but never read its weights."""
    def build(folder: Path) -> None:
        header, size = safetensors_header([TensorSpec(n, s, torch.bfloat16) for n, s in base_tensors(shapes, layers)])
        with open(folder / "model.safetensors", "wb") as f:
            f.write(header)
            f.truncate(len(header) + size)
        (folder / "config.json").write_text(json.dumps(llama_config(shapes, layers), indent=2))

    return cached(CACHE / f"base-sparse-L{layers}", {"kind": "sparse", "layers": layers, "shapes": asdict(shapes)},
                  build)


def _base_value(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    if len(shape) == 1:
        return torch.ones(shape)
    return torch.randn(shape, generator=generator(seed, name, "base")) * BASE_STD


def _dense_value(name: str, shape: tuple[int, ...], seed: int, specialist: int | None, rank: int,
                 s: Structure) -> torch.Tensor:
    """The base's value, or a specialist's: W_0 + a structured rank-`rank` update + a full-rank tail (10 % energy)."""
    w = _base_value(name, shape, seed)
    if specialist is None:
        return w
    g = generator(seed, name, "tail", specialist)
    if len(shape) == 1:
        return w + 0.01 * torch.randn(shape, generator=g)
    US, Vt = structured_update(shape, min(rank, *shape), seed, name, specialist, s)
    delta = US @ Vt
    tail = torch.randn(shape, generator=g)
    delta += tail * (0.1**0.5 * float(delta.norm()) / float(tail.norm()))
    return w + delta


def make_dense(n: int, layers: int, seed: int = 0, shapes: Shapes = Shapes(), rank: int = 256,
               structure: Structure = Structure(rel_norm=0.05)) -> tuple[Path, list[Path]]:
    """A base and n full fine-tunes of `layers` layers, HF layout (shards + index + config.json).

    Shards are per layer (plus one for embeddings/head) and shared by every depth through symlinks,
    so the 1-layer and 2-layer models cost the disk of the 2-layer one only."""
    tag = f"dense-v{shapes.vocab}-h{shapes.hidden}-m{shapes.intermediate}-r{rank}-s{seed}"
    root = CACHE / tag
    models = ["base"] + [f"specialist{i}" for i in range(n)]
    for m, who in zip(models, [None, *range(n)]):
        for part in ["outer", *range(layers)]:
            _dense_shard(root / "shards" / m, part, seed, who, rank, shapes, structure)
    folders = []
    for m in models:
        folder = root / f"L{layers}" / m
        params = {"kind": "dense-view", "layers": layers, "model": m}
        folders.append(cached(folder, params, lambda f, m=m: _dense_view(f, root / "shards" / m, layers, shapes)))
    return folders[0], folders[1:]


def _dense_parts(shapes: Shapes, part: object) -> list[tuple[str, tuple[int, ...]]]:
    every = base_tensors(shapes, 0 if part == "outer" else int(part) + 1)
    if part == "outer":
        return [t for t in every if not t[0].startswith("model.layers.")]
    return [t for t in every if t[0].startswith(f"model.layers.{part}.")]


def _dense_shard(folder: Path, part: object, seed: int, who: int | None, rank: int, shapes: Shapes,
                 s: Structure) -> None:
    path = folder / f"{part}.safetensors"
    stamp = folder / f"{part}{STAMP}"
    params = json.dumps({"who": who, "seed": seed, "rank": rank, "shapes": asdict(shapes), "s": asdict(s)})
    if stamp.is_file() and stamp.read_text() == params and path.is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    items = [(TensorSpec(n, shape, torch.bfloat16),
              lambda n=n, shape=shape: _dense_value(n, shape, seed, who, rank, s)) for n, shape in
             _dense_parts(shapes, part)]
    write_stream(tmp, items)
    os.replace(tmp, path)
    stamp.write_text(params)


def _dense_view(folder: Path, shards: Path, layers: int, shapes: Shapes) -> None:
    weight_map: dict[str, str] = {}
    total = 0
    for part in ["outer", *range(layers)]:
        name = f"model-{part}.safetensors" if part == "outer" else f"model-layer{int(part):03d}.safetensors"
        os.symlink(shards / f"{part}.safetensors", folder / name)
        for n, shape in _dense_parts(shapes, part):
            weight_map[n] = name
            total += 2 * int(torch.tensor(shape).prod())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(llama_config(shapes, layers), indent=2))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["lora", "sparse-base", "dense"])
    ap.add_argument("-n", type=int, default=4, help="number of specialists (2..4 in the benchmark)")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=32000)
    a = ap.parse_args(argv)
    shapes = Shapes(vocab=a.vocab)
    if a.kind == "lora":
        out = make_lora(a.n, a.layers, a.seed, shapes=shapes)
    elif a.kind == "sparse-base":
        out = [make_sparse_base(a.layers, shapes)]
    else:
        base, specs = make_dense(a.n, a.layers, a.seed, shapes)
        out = [base, *specs]
    for p in out:
        print(p)


if __name__ == "__main__":
    main()
