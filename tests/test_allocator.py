"""`ssam merge` asks torch for huge-page allocations, before torch is imported, exactly when the recipe's output
writes whole weights; a user's own setting wins; the format list is the registry's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssam_cli.allocator import DEFAULT_FORMAT, WHOLE_WEIGHT_FORMATS

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
PROBE = """
import os, sys
from pathlib import Path
from ssam_cli.allocator import use_huge_pages_for
use_huge_pages_for(Path(sys.argv[1]))
assert "torch" not in sys.modules
import torch
x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
huge = 0
for line in open("/proc/self/smaps_rollup"):
    if line.startswith("AnonHugePages:"):
        huge = int(line.split()[1])
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), huge)
"""


def probe(recipe: Path, env_value: str | None = None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE, str(recipe)], env=env, capture_output=True, text=True,
                         check=True)
    value, huge = out.stdout.split()
    return value, int(huge)


def recipe(tmp_path: Path, fmt: str | None) -> Path:
    path = tmp_path / f"{fmt}.yaml"
    path.write_text("method: ssam\n" + (f"output:\n  path: out\n  format: {fmt}\n" if fmt else "output: {path: out}\n"))
    return path


@pytest.mark.skipif(not THP_MODE.exists() or "[never]" in THP_MODE.read_text()
                    or not Path("/proc/self/smaps_rollup").exists(), reason="no transparent huge pages here")
def test_whole_weight_outputs_get_huge_pages_lora_outputs_do_not_and_the_user_decides_first(tmp_path):
    value, huge = probe(recipe(tmp_path, "full"))
    assert value == "1" and huge >= 32 * 1024  # most of the 64 MiB tensor on 2 MiB pages (kB)
    assert probe(recipe(tmp_path, None))[0] == "1"  # the default format is full
    value, small = probe(recipe(tmp_path, "lora"))
    assert value == "None" and small < huge
    assert probe(recipe(tmp_path, "full"), "0")[0] == "0"
    assert probe(tmp_path / "missing.yaml")[0] == "None"  # left to the recipe loader's error


def test_the_format_list_is_the_registrys():
    from ssam_cli.outputs import FORMATS
    from ssam_cli.recipe import Output

    assert WHOLE_WEIGHT_FORMATS == {name for name, f in FORMATS.items() if f.reads_base_weights}
    assert Output.model_fields["format"].default == DEFAULT_FORMAT
