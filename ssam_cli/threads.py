"""How many threads torch's CPU kernels use, for a block of work.

On the CPU the merge of LoRA specialists is a sequence of small products and R × R decompositions. Their OpenMP
threads spin-wait whenever another thread (the engine's reader) or process holds a core: measured on 2 vCPUs,
a 2-layer merge of four rank-128 Vicuna-7B-shaped adapters took 5.2–5.5 s on one thread against 9.4–19.3 s on
two (benchmarks/perf.py's LoRA recipe, docs/performance.md).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch


@contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with n intra-op threads (None: leave torch's setting), restoring the previous count."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
