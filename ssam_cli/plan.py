"""Give every tensor of the base and of the specialists a role, from headers alone, and fail early.

merge   2-D weights some specialist changed: the method merges their deltas
average other floating tensors some specialist changed (biases, norms): mean of the specialists; also the
        shared tensors the base lacks (ModelCompose's `default` tokens): mean of the specialists that hold them
keep    modality-specific tensors (modules.keep; every tensor a ModelCompose specialist holds besides its language
        LoRA; every tensor of a wrapped multimodal checkpoint outside its decoder): written per specialist, never
        merged
copy    tensors no specialist changed: the base's own value (integer tensors too: one that a specialist
        changed cannot be merged, and the engine refuses it when it reads the values)
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Literal, Optional, Sequence

import torch

from ssam_cli.errors import InputError
from ssam_cli.sources.base import Source, TensorInfo
from ssam_cli.sources.decoder_prefix import DecoderMap, check_decoder, find_decoder


class Role(str, Enum):
    MERGE = "merge"
    AVERAGE = "average"
    KEEP = "keep"
    COPY = "copy"


@dataclass(frozen=True)
class Contribution:
    """Specialist `index` changes the tensor, by a full value or a low-rank delta stored as `key`."""

    index: int
    kind: Literal["full", "lowrank"]
    key: str


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor's fate; a merged weight also carries the method parameters that apply to it (recipe overrides
    resolved and validated once, here) and the merge space it runs in."""

    name: str
    role: Role
    shape: tuple[int, ...]
    dtype: torch.dtype
    contributions: tuple[Contribution, ...] = ()
    params: Any = None
    space: str = "dense"
    in_base: bool = True  # False: a shared tensor the base lacks (average of its holders, no base value)


@dataclass(frozen=True)
class KeptTensor:
    specialist: str
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class Plan:
    """What the engine will do, in the order it will do it (layer by layer)."""

    tensors: list[PlannedTensor]
    kept: list[KeptTensor] = field(default_factory=list)
    decoders: dict[str, DecoderMap] = field(default_factory=dict)  # full specialist → where it holds the decoder

    def count(self, role: Role) -> int:
        if role is Role.KEEP:
            return len(self.kept)
        return sum(t.role is role for t in self.tensors)

    def of_role(self, role: Role) -> list[PlannedTensor]:
        return [t for t in self.tensors if t.role is role]


@dataclass(frozen=True)
class NamedSource:
    """A specialist's source with the name the recipe gave it (for messages and modality files), and the recipe's
    `decoder:` for a full checkpoint that holds the base's decoder under other names (None: detected)."""

    name: str
    source: Source
    decoder: Optional[DecoderMap] = None


LAYER_INDEX = re.compile(r"\.(\d+)\.")  # the block index in a tensor name


def layer_of(name: str) -> int:
    """The first block index in a tensor name (-1 for tensors outside the repeated blocks)."""
    m = LAYER_INDEX.search(name)
    return int(m.group(1)) if m else -1


def matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def map_to_base(name: str, base: dict[str, TensorInfo], where: str = "") -> Optional[str]:
    """The base tensor an adapter key names: exact, else after dropping leading wrapper parts, else a unique
    base name ending with it (PEFT wraps base names in prefixes that depend on the model class). A key that ends
    several base names is an error naming them (`where`: whose key it is), never a guess."""
    if name in base:
        return name
    parts = name.split(".")
    for i in range(1, len(parts) - 1):
        if ".".join(parts[i:]) in base:
            return ".".join(parts[i:])
    hits = [b for b in base if b.endswith("." + name)]
    if len(hits) > 1:
        raise InputError(f"{where}: {name} fits {len(hits)} weights of the base ({', '.join(hits[:3])}"
                         f"{', …' if len(hits) > 3 else ''}); name the module in full")
    return hits[0] if hits else None


def build_plan(base: Source, specialists: Sequence[NamedSource], keep: Sequence[str] = (),
               average: Sequence[str] = (), params_of: Optional[Callable[[str], Any]] = None,
               space: str = "dense") -> Plan:
    """Pair every tensor by name, check shapes and dtypes, and assign roles; each merged weight gets
    params_of(its name) and `space`. Raises InputError naming tensor and file on any mismatch, missing tensor or
    unexplained extra tensor.

    A full checkpoint is paired through one name rewrite for its whole decoder (sources/decoder_prefix.py), never
    tensor by tensor: under a wrapper, every tensor outside the decoder is kept for that specialist."""
    base_infos = base.tensors
    contributions: dict[str, list[Contribution]] = {name: [] for name in base_infos}
    kept: list[KeptTensor] = []
    decoders: dict[str, DecoderMap] = {}

    for index, named in enumerate(specialists):
        src = named.source
        where = f"specialist '{named.name}' ({src.path})"
        if named.decoder is not None and src.kind != "full":
            raise InputError(f"{where}: decoder: applies to full checkpoints; this specialist is a {src.kind} source")
        if src.kind == "full":
            decoders[named.name] = _decoder_of(named, base_infos, keep, where)
            _pair_full(index, named, decoders[named.name], base, keep, contributions, kept, where)
        else:
            _pair_saved(index, named, base, keep, contributions, kept, where)
        for key, info in src.lowrank.items():
            target = map_to_base(key, base_infos, where)
            if target is None:
                raise InputError(f"{where}: LoRA target {key} matches no weight of the base ({base.path})")
            if matches(target, keep):
                raise InputError(f"{where}: LoRA target {target} matches modules.keep; a kept tensor must be stored "
                                 "whole, not as a low-rank update")
            if tuple(base_infos[target].shape) != tuple(info.shape):
                raise InputError(f"{where}: LoRA on {target} has shape {tuple(info.shape)}, the base weight "
                                 f"{tuple(base_infos[target].shape)}")
            contributions[target].append(Contribution(index, "lowrank", key))

    planned = []
    for name, info in base_infos.items():
        contrib = tuple(contributions[name])
        if matches(name, keep) or not contrib or not info.dtype.is_floating_point:
            role = Role.COPY  # an integer tensor keeps its full specialists: the engine checks they left it alone
            contrib = contrib if not info.dtype.is_floating_point and not matches(name, keep) else ()
        elif len(info.shape) == 2 and not matches(name, average):
            role = Role.MERGE
        else:
            role = Role.AVERAGE
        merged = role is Role.MERGE
        params = params_of(name) if merged and params_of is not None else None
        planned.append(PlannedTensor(name, role, tuple(info.shape), info.dtype, contrib, params,
                                     space if merged else "dense"))
    order = {name: i for i, name in enumerate(base_infos)}
    planned.sort(key=lambda t: (layer_of(t.name), order[t.name]))
    return Plan(planned + _shared_tensors(specialists), kept, decoders)


def _shared_tensors(specialists: Sequence[NamedSource]) -> list[PlannedTensor]:
    """One averaged tensor per shared key (not in the base), contributed by every specialist that holds it, at one
    shape and dtype for all (an average of tensors of different shapes has no meaning)."""
    holders: dict[str, list[tuple[int, TensorInfo]]] = {}
    for index, named in enumerate(specialists):
        for key, info in named.source.shared.items():
            if key in holders:
                first, seen = holders[key][0]
                if tuple(info.shape) != tuple(seen.shape) or info.dtype != seen.dtype:
                    raise InputError(f"specialist '{named.name}': shared tensor {key} is {tuple(info.shape)} "
                                     f"{info.dtype}, specialist '{specialists[first].name}' has {tuple(seen.shape)} "
                                     f"{seen.dtype}; a shared tensor is averaged, so they must agree")
            holders.setdefault(key, []).append((index, info))
    return [PlannedTensor(key, Role.AVERAGE, tuple(held[0][1].shape), held[0][1].dtype,
                          tuple(Contribution(i, "full", key) for i, _ in held), in_base=False)
            for key, held in holders.items()]


def _decoder_of(named: NamedSource, base_infos: dict[str, TensorInfo], keep: Sequence[str],
                where: str) -> DecoderMap:
    """The recipe's rewrite, checked, or the one detected; base tensors matching modules.keep need not be there."""
    required = [b for b in base_infos if not matches(b, keep)]
    if named.decoder is not None:
        return check_decoder(named.decoder, required, named.source.tensors, where)
    return find_decoder(list(base_infos), required, named.source.tensors, where)


def _pair_full(index: int, named: NamedSource, mapping: DecoderMap, base: Source, keep: Sequence[str],
               contributions: dict[str, list[Contribution]], kept: list[KeptTensor], where: str) -> None:
    """Each base tensor from the specialist's name for it; what the decoder does not hold is kept when the decoder
    is wrapped (towers, projectors), and an error otherwise (a plain checkpoint holds only the base's tensors)."""
    base_infos = base.tensors
    base_of = {mapping(b): b for b in base_infos}
    for key, info in named.source.tensors.items():
        target = base_of.get(key)
        if matches(key, keep) or (target is None and not mapping.identity):
            kept.append(KeptTensor(named.name, key, info.shape, info.dtype))
            continue
        if target is None:
            raise InputError(f"{where}: tensor {key} is not in the base ({base.path}); if it is "
                             "modality-specific, add a pattern for it to modules.keep")
        _check_pair(target, base_infos[target], info, where, base, key)
        contributions[target].append(Contribution(index, "full", key))


def _pair_saved(index: int, named: NamedSource, base: Source, keep: Sequence[str],
                contributions: dict[str, list[Contribution]], kept: list[KeptTensor], where: str) -> None:
    """An adapter's full tensors: PEFT's saved modules, paired by map_to_base (PEFT wraps their names); every
    tensor of a ModelCompose specialist is modality-specific."""
    src = named.source
    for key, info in src.tensors.items():
        if matches(key, keep) or src.kind == "modelcompose":
            kept.append(KeptTensor(named.name, key, info.shape, info.dtype))
            continue
        target = map_to_base(key, base.tensors, where)
        if target is None:
            raise InputError(f"{where}: tensor {key} is not in the base ({base.path}); if it is "
                             "modality-specific, add a pattern for it to modules.keep")
        _check_pair(target, base.tensors[target], info, where, base)
        contributions[target].append(Contribution(index, "full", key))


def _check_pair(name: str, base_info: TensorInfo, info: TensorInfo, where: str, base: Source,
                key: Optional[str] = None) -> None:
    """Shape and kind of dtype agree; `key` is the specialist's own name for the tensor when it differs."""
    said = name if key in (None, name) else f"{key} (the base's {name})"
    if tuple(info.shape) != tuple(base_info.shape):
        raise InputError(f"{where}: tensor {said} has shape {tuple(info.shape)}, the base ({base.path}) "
                         f"{tuple(base_info.shape)}")
    if info.dtype.is_floating_point != base_info.dtype.is_floating_point:
        raise InputError(f"{where}: tensor {said} is {info.dtype}, the base ({base.path}) {base_info.dtype}")
