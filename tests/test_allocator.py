"""The CLI asks torch for huge-page allocations before torch is imported, and a user's own setting wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
PROBE = """
import os, sys
import ssam_cli.cli  # what `ssam` imports first
assert "torch" not in sys.modules
import torch
x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
huge = 0
for line in open("/proc/self/smaps_rollup"):
    if line.startswith("AnonHugePages:"):
        huge = int(line.split()[1])
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), huge)
"""


def probe(env_value: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    value, huge = out.stdout.split()
    return value, int(huge)


@pytest.mark.skipif(not THP_MODE.exists() or "[never]" in THP_MODE.read_text()
                    or not Path("/proc/self/smaps_rollup").exists(), reason="no transparent huge pages here")
def test_the_cli_puts_large_tensors_on_huge_pages_unless_the_user_says_no():
    value, huge = probe(None)
    assert value == "1" and huge >= 32 * 1024  # most of the 64 MiB tensor on 2 MiB pages (kB)
    value, huge_off = probe("0")
    assert value == "0" and huge_off < huge
