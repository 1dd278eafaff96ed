"""The contract every output format fulfils, so the engine treats them alike and holds no format branch.

A format is built from the prepared merge, checked before any tensor is read, opened on the temporary output
folder, fed every streamed tensor in plan order, finished (its files and manifest section) and verified.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import torch

from ssam_cli.deltas import Delta, LowRankDelta
from ssam_cli.errors import UserError
from ssam_cli.finite import merged_finite
from ssam_cli.plan import PlannedTensor, Role
from ssam_cli.spaces import produces_lowrank

if TYPE_CHECKING:
    from ssam_cli.engine import Prepared


@dataclass
class Finished:
    """What a format wrote: its files, the modality files' records, and its own manifest section (if any)."""

    files: list[str]
    modalities: dict[str, Any] = field(default_factory=dict)
    section: Optional[dict[str, Any]] = None


class OutputFormat(ABC):
    """One output format. `reads_base_weights`: whether the merge must read the base's weights for it;
    `lowrank_only`: whether it holds only low-rank updates (a LowRankOutput)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    kept_where: ClassVar[str] = "modalities/<name>.safetensors"  # where kept (modality-specific) tensors go
    reads_base_weights: ClassVar[bool]
    lowrank_only: ClassVar[bool]

    def __init__(self, prepared: "Prepared") -> None:
        self.prepared = prepared
        self.recipe = prepared.recipe
        self.folder: Optional[Path] = None
        self.shared: dict[str, torch.Tensor] = {}  # shared tensors' averages, by name (see take)

    def check(self) -> None:
        """Refuse, before any tensor is read, a plan this format cannot hold (UserError naming the field); a format
        that holds every tensor refuses nothing."""

    @property
    def where(self) -> str:
        return f"{self.recipe.source_file}: output.format: {self.name}"

    def streamed(self) -> list[PlannedTensor]:
        """The planned tensors the engine streams into this format, in plan order: every one when the format
        reads base weights, else the merged weights; the shared tensors (averaged, not in the base) always."""
        return [t for t in self.prepared.plan.tensors
                if self.reads_base_weights or t.role is Role.MERGE or not t.in_base]

    def take(self, t: PlannedTensor, value: Any) -> None:
        """A streamed tensor's value: a shared tensor's average is kept for finish(), the rest goes to accept()."""
        if t.in_base:
            self.accept(t, value)
        else:
            self.shared[t.name] = value

    def out_dtype(self, t: PlannedTensor) -> torch.dtype:
        """The dtype tensor t is written in: the recipe's output.dtype for floating tensors, else t's own."""
        from ssam_cli.dtypes import OUTPUT_DTYPES

        wanted = self.recipe.output.dtype
        return t.dtype if wanted == "auto" or not t.dtype.is_floating_point else OUTPUT_DTYPES[wanted]

    def estimated_bytes(self) -> int:
        """What the weight files will hold, from the plan: every streamed tensor in its output dtype and every
        kept tensor as stored (for the plan table; low-rank formats depend on the merged ranks)."""
        plan = self.prepared.plan
        streamed = sum(math.prod(t.shape) * self.out_dtype(t).itemsize for t in self.streamed())
        return streamed + sum(math.prod(k.shape) * k.dtype.itemsize for k in plan.kept)

    @abstractmethod
    def materialize(self, t: PlannedTensor, base: Optional[torch.Tensor], delta: Delta) -> Any:
        """The value to accept for merged weight t (runs in a worker thread: no writing to the output). `base` is
        this weight's own float32 copy (or None when the format reads no base weights): it may be written to."""

    def open(self, folder: Path) -> None:
        self.folder = folder

    @abstractmethod
    def accept(self, t: PlannedTensor, value: Any) -> None:
        """Take tensor t's value (plan order): a full tensor, a LowRankDelta, or None for a rank-0 update."""

    @abstractmethod
    def finish(self) -> Finished:
        """Write what remains (indexes, configs, modality files) into the folder."""

    @abstractmethod
    def verify(self) -> None:
        """Read the written headers back: exactly what the plan promised, or RuntimeError."""


class LowRankOutput(OutputFormat):
    """A format holding only low-rank updates, written by a writer that takes them by `add(name, LowRankDelta)`:
    every change must be a LoRA merge whose method, in the tensor's space, produces low-rank updates; no base
    weight is read."""

    reads_base_weights = False
    lowrank_only = True
    writer: Any  # set by open(): LoraAdapterWriter, ModelComposeWriter

    def check(self) -> None:
        p, where = self.prepared, self.where
        for t in p.plan.tensors:
            if t.in_base and (t.role is Role.AVERAGE or any(c.kind == "full" for c in t.contributions)):
                who = p.inputs.specialists[t.contributions[0].index].name
                raise UserError(f"{where}: tensor {t.name} is changed in full by specialist '{who}'; a {self.name} "
                                "output holds only low-rank updates of LoRA specialists; use format: full")
            spec = p.method
            if t.role is Role.MERGE and not produces_lowrank(spec, t.space, t.params):
                raise UserError(f"{where}: method {spec.name} in space {t.space} does not produce low-rank "
                                f"updates (at {t.name}); use format: full"
                                + (", or space: core" if "core" in spec.spaces else ""))
        if not p.plan.of_role(Role.MERGE):
            raise UserError(f"{where}: no weight to merge")

    def materialize(self, t: PlannedTensor, base: Optional[torch.Tensor], delta: Delta) -> Any:
        """The update itself (finite), None at rank 0."""
        if not isinstance(delta, LowRankDelta):
            raise UserError(f"{t.name}: method {self.recipe.method} returned a dense update; use output.format: full")
        if not delta.rank:
            return None
        merged_finite(t.name, delta.B)
        merged_finite(t.name, delta.A)
        return delta

    def accept(self, t: PlannedTensor, value: Any) -> None:
        if value is not None:
            self.writer.add(t.name, value)
