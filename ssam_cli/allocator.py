"""How torch allocates CPU memory for a merge: whole weights on transparent huge pages.

A merge that writes whole weights (W_0 + Δ for every base tensor) allocates several fresh tensors per weight
(float32 copies of the inputs, deltas, the merged value), each hundreds of MB for a 7B model. On Linux each first
touch of a 4 KiB page is a page fault and a page zeroed: a new 180 MB tensor costs 45,000 of them, more than the
arithmetic done on it (measured: `x + y * 0.5` on 45 M floats 0.31 s, in place 0.03 s). torch's CPU allocator
backs tensors of 2 MB or more with 2 MiB pages when THP_MEM_ALLOC_ENABLE is set before its first allocation:
0.12 s (docs/performance.md). Merges of LoRA factors gain nothing from it and only lose memory (the 32-layer
LoRA → LoRA case: peak RssAnon 870 against 566 MB, the same time), so it is asked for by output format. It takes
effect only where the kernel's THP mode is `madvise` or `always`, and changes no value.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"
# The output formats that write every base weight (their OutputFormat.reads_base_weights; a test keeps the two
# equal: this module must decide before torch, and so the registry, is imported).
WHOLE_WEIGHT_FORMATS = frozenset({"full", "per_specialist"})
DEFAULT_FORMAT = "full"  # the recipe's output.format default (tested)


def use_huge_pages_for(recipe: Path) -> None:
    """Ask torch for huge-page allocations when the recipe's output writes whole weights, unless the user set the
    variable. Call before torch is imported. An unreadable recipe is left to the recipe loader's error."""
    try:
        data = yaml.safe_load(Path(recipe).read_text())
        output = data.get("output") or {}
        fmt = output.get("format", DEFAULT_FORMAT)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return
    if fmt in WHOLE_WEIGHT_FORMATS:
        os.environ.setdefault(THP_VARIABLE, "1")
