"""The stream's scheduling: results in plan order whatever the workers, bounded work in flight, and with several
CUDA devices one worker per device, each bound to its own (two CPU workers stand in for two GPUs)."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch

from ssam_cli import stream as stream_module
from ssam_cli.plan import Plan
from ssam_cli.stream import schedule, stream

ITEMS = [f"w{i}" for i in range(12)]


def jittery(record: list[tuple[str, str]], busy: list[int], peak: list[int]):
    lock = threading.Lock()

    def work(item: str) -> str:
        with lock:
            busy[0] += 1
            peak[0] = max(peak[0], busy[0])
        time.sleep(random.random() * 0.01)  # finish out of order
        with lock:
            record.append((item, threading.current_thread().name))
            busy[0] -= 1
        return item.upper()
    return work


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_come_in_plan_order_with_at_most_workers_in_flight(workers):
    record: list[tuple[str, str]] = []
    busy, peak = [0], [0]
    out = list(stream(ITEMS, lambda t: t, jittery(record, busy, peak), workers))
    assert out == [t.upper() for t in ITEMS]
    assert peak[0] <= workers and len(record) == len(ITEMS)


def test_two_devices_get_one_worker_each_bound_once_taking_alternate_weights(monkeypatch):
    bound: dict[str, torch.device] = {}

    def bind(device: torch.device) -> None:  # records which device each worker thread was bound to
        assert threading.current_thread().name not in bound
        bound[threading.current_thread().name] = device

    monkeypatch.setattr(stream_module, "bind_device", bind)
    devices = (torch.device("cpu", 0), torch.device("cpu", 1))  # stand-ins for cuda:0 and cuda:1
    record: list[tuple[str, str]] = []
    busy, peak = [0], [0]
    out = list(stream(ITEMS, lambda t: t, jittery(record, busy, peak), workers=2, devices=devices))
    assert out == [t.upper() for t in ITEMS]
    assert sorted(bound.values(), key=str) == list(devices)
    where = {item: bound[thread] for item, thread in record}
    assert [where[t] for t in ITEMS] == [devices[i % 2] for i in range(len(ITEMS))]


def test_plain_cuda_with_several_visible_devices_spreads_one_worker_per_device():
    plan = Plan(tensors=[])
    gpus = (torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cuda", 2))
    s = schedule(plan, torch.device("cuda"), visible=gpus)
    assert s.workers == 3 and s.devices == gpus
    one = schedule(plan, torch.device("cuda", 1), visible=gpus)  # cuda:N: that device alone
    assert one.workers == 1 and one.devices == ()
    single = schedule(plan, torch.device("cuda"), visible=gpus[:1])
    assert single.workers == 1 and single.devices == ()


def test_bind_device_leaves_the_cpu_alone():
    stream_module.bind_device(torch.device("cpu"))  # no CUDA call: would raise on a machine without CUDA


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_dense_deltas_are_the_float32_differences_and_never_write_to_the_inputs(stored):
    """W_i − W_0 of the float32 values against float64 (one float32 rounding of the difference: 1e-7 relative), the
    base and every specialist's tensor left exactly as read, whether or not the float32 conversion made a copy."""
    from ssam_cli.plan import Contribution, PlannedTensor, Role
    from ssam_cli.stream import Loaded, to_deltas

    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 12, generator=g).to(stored)
    parts = {i: (base.double() + 0.01 * torch.randn(16, 12, generator=g, dtype=torch.float64)).to(stored)
             for i in range(2)}
    before = {i: p.clone() for i, p in parts.items()}
    base_before = base.clone()
    t = PlannedTensor("w", Role.MERGE, (16, 12), stored, tuple(Contribution(i, "full", "w") for i in range(2)))
    _, deltas = to_deltas(Loaded(t, base, parts), 3, torch.device("cpu"))
    for i in range(2):
        exact = parts[i].float().double() - base.float().double()
        got = deltas[i].tensor
        assert got.dtype == torch.float32
        assert float((got.double() - exact).norm() / exact.norm()) < 1e-7
        assert torch.equal(parts[i], before[i])
    assert torch.equal(base, base_before)
    assert deltas[2].rank == 0  # the specialist that left the weight alone: an exact zero


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float32])
def test_a_writable_base_is_a_copy_of_its_own_even_when_no_conversion_was_needed(stored):
    """The full format adds the merged update into the base value in place: it must never be the source's tensor
    (for a float32 base that would write into the input's memory)."""
    from ssam_cli.plan import PlannedTensor, Role
    from ssam_cli.stream import Loaded, to_deltas

    source = torch.randn(6, 5).to(stored)
    t = PlannedTensor("w", Role.MERGE, (6, 5), stored)
    shared, _ = to_deltas(Loaded(t, source, {}), 1, torch.device("cpu"))
    own, _ = to_deltas(Loaded(t, source, {}), 1, torch.device("cpu"), writable_base=True)
    assert torch.equal(own, source.float())
    assert own.data_ptr() != source.data_ptr()
    assert (shared.data_ptr() == source.data_ptr()) == (stored == torch.float32)  # no copy unless asked
