"""The one stream merge and inspect-spectrum share: read planned tensors in order, ahead of the work, compute them
on a few workers (on several CUDA devices: one worker per device), and hand results back in plan order, with one
progress display.

Memory: at most `depth + 1` weights of every specialist in flight on the read side, and `workers` being computed.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch

from ssam_cli.deltas import Delta, DenseDelta, LowRankDelta
from ssam_cli.dtypes import COMPUTE
from ssam_cli.finite import require_finite
from ssam_cli.inputs import Inputs
from ssam_cli.plan import Plan, PlannedTensor, Role
from ssam_cli.sources.base import Source


@dataclass
class Loaded:
    """One planned tensor's inputs as stored on disk (CPU): the base value if needed, and each contribution."""

    tensor: PlannedTensor
    base: Optional[torch.Tensor]
    parts: dict[int, Any]  # specialist index → full tensor or LowRankDelta


def read_inputs(inputs: Inputs, t: PlannedTensor, need_base: bool) -> Loaded:
    """Read what tensor t needs from disk, each value checked finite; safe to run in a background thread (no device
    work). The base value is read when asked, or when a specialist changed t in full (its delta is W_i − W_0)."""
    need_base = t.in_base and (need_base or any(c.kind == "full" for c in t.contributions))
    parts: dict[int, Any] = {}
    for c in t.contributions:
        named = inputs.specialists[c.index]
        if c.kind == "lowrank":
            delta = named.source.read_lowrank(c.key)
            for factor in (delta.B, delta.A):
                checked_finite(factor, f"specialist '{named.name}'", named.source, c.key)
            parts[c.index] = delta
        else:
            parts[c.index] = checked_finite(named.source.read(c.key), f"specialist '{named.name}'", named.source,
                                            c.key)
    base = checked_finite(inputs.base.read(t.name), "base", inputs.base, t.name) if need_base else None
    return Loaded(t, base, parts)


def checked_finite(tensor: torch.Tensor, who: str, source: Source, key: str) -> torch.Tensor:
    """An input tensor as read, if every value is finite: a NaN or inf in an input would silently wipe out or
    poison the merge (SSAM's numerical rank drops to 0), so it is an error naming the input, file and tensor."""
    return require_finite(tensor, f"{who}: {source.file_of(key)}: tensor {key} has non-finite values (inf/nan); "
                                  "a merge of it would be meaningless")


def to_deltas(loaded: Loaded, n: int, device: torch.device,
              writable_base: bool = False) -> tuple[Optional[torch.Tensor], list[Delta]]:
    """The base value and one delta per specialist, float32 on device (rank-0 zero where a specialist left it).

    With `writable_base` the base value is a tensor of its own, never the source's, so that an output format can
    add the merged update into it in place (one weight-sized allocation fewer per weight, see allocator.py)."""
    base = loaded.base.to(device, COMPUTE, copy=writable_base) if loaded.base is not None else None
    deltas: list[Delta] = []
    shape = loaded.tensor.shape
    for i in range(n):
        part = loaded.parts.get(i)
        if part is None:
            deltas.append(LowRankDelta.zero((shape[0], shape[1]), COMPUTE, device) if len(shape) == 2
                          else DenseDelta(torch.zeros(shape, dtype=COMPUTE, device=device)))
        elif isinstance(part, LowRankDelta):
            deltas.append(part.to(device, COMPUTE))
        else:
            deltas.append(DenseDelta(_minus(part, base)))
    return base, deltas


def _minus(part: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """part − base in float32 on base's device, allocating one tensor: the converted copy is subtracted from in
    place (a fresh tensor of a 7B weight costs more in page faults than the subtraction, see allocator.py). A part
    already float32 there is the source's own tensor and is never written to."""
    moved = part.to(base.device, COMPUTE)
    return moved.sub_(base) if moved is not part else moved - base


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, ahead: int,
                name: str = "ssam", places: Sequence[Callable[[], None]] = ()) -> Iterator[Any]:
    """fn over items in `workers` background threads (torch releases the GIL), results in the items' order.

    While the caller holds one result, at most `ahead` further calls are submitted or done, which bounds memory to
    ahead + 1 results. With ahead = 0 there is nothing to overlap and fn runs inline. With `places` (one per
    worker: a function run once in that worker's own thread, such as binding it to one CUDA device), item i runs
    on worker i mod len(places).
    """
    if ahead <= 0 and not places:
        yield from map(fn, items)
        return
    pools = ([ThreadPoolExecutor(1, f"{name}-{i}", initializer=place) for i, place in enumerate(places)] if places
             else [ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)])
    try:
        pending: deque[Future[Any]] = deque()
        for i, item in enumerate(items):
            pending.append(pools[i % len(pools)].submit(fn, item))
            if len(pending) > max(ahead, len(pools) - 1):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


def prefetched(items: Sequence[PlannedTensor], read: Callable[[PlannedTensor], Loaded],
               depth: int = 2) -> Iterator[Loaded]:
    """Read the next `depth` tensors in a background thread while the current one is worked on."""
    return ordered_map(read, items, workers=1, ahead=depth, name="ssam-read")


def progress_bar(show: bool) -> Any:
    """A rich progress bar on stderr, or None (quiet): the one progress display of every long command."""
    if not show:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=False)


def stream(items: Sequence[PlannedTensor], read: Callable[[PlannedTensor], Loaded], work: Callable[[Loaded], Any],
           workers: int, progress: Any = None, label: str = "merging",
           devices: Sequence[torch.device] = ()) -> Iterator[Any]:
    """work(read(t)) for every t in items, read ahead in one thread, `workers` computed at a time (one: inline),
    yielded in plan order; advances a progress task named `label`. With several `devices` (Schedule.devices),
    one worker per device, bound to it (bind_device), takes every len(devices)-th weight."""
    task = progress.add_task(label, total=len(items)) if progress else None
    places = [lambda d=d: bind_device(d) for d in devices] if len(devices) > 1 else []
    for result in ordered_map(work, prefetched(items, read), workers, ahead=workers - 1, name="ssam-work",
                              places=places):
        yield result
        if progress:
            progress.advance(task)


def bind_device(device: torch.device) -> None:
    """Make `device` the calling thread's current CUDA device, so that work placed on `cuda` lands on it (CUDA's
    current device is per host thread); nothing to do for a CPU."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def lowrank_only(plan: Plan) -> bool:
    """Every merged weight is changed by LoRA updates only (the cheap, factored case)."""
    return all(c.kind == "lowrank" for t in plan.of_role(Role.MERGE) for c in t.contributions)


@dataclass(frozen=True)
class Schedule:
    """How a stream runs: the device, how many weights at a time, torch's CPU threads (None: torch's own), and,
    on a machine with several CUDA devices asked for as plain `cuda`, the devices the workers are spread over."""

    device: torch.device
    workers: int
    threads: Optional[int]
    devices: tuple[torch.device, ...] = ()


def schedule(plan: Plan, device: torch.device, threads: Optional[int] = None,
             visible: Optional[Sequence[torch.device]] = None) -> Schedule:
    """`cuda` with several visible devices (`visible`: the CUDA devices, found when None): one worker per device,
    each weight merged wholly on one of them (weights are independent), results still in plan order. `cuda:N`
    means that device alone.

    LoRA-only work on a CPU with two cores or more: two weights at a time, each on one torch thread (small
    products and decompositions gain nothing from two threads per weight; see ssam_cli/threads.py). Otherwise one
    weight at a time on torch's own threads. An explicit `threads` means one worker with that many threads."""
    if device.type == "cuda" and device.index is None:
        gpus = tuple(visible) if visible is not None else cuda_devices()
        if len(gpus) > 1:
            return Schedule(device, len(gpus), threads, gpus)
    if threads is not None:
        return Schedule(device, 1, threads)
    cheap = device.type == "cpu" and lowrank_only(plan)
    return Schedule(device, 2 if cheap and (os.cpu_count() or 1) >= 2 else 1, 1 if cheap else None)


def cuda_devices() -> tuple[torch.device, ...]:
    """Every visible CUDA device (CUDA_VISIBLE_DEVICES applies)."""
    return tuple(torch.device("cuda", i) for i in range(torch.cuda.device_count())) if torch.cuda.is_available() else ()
