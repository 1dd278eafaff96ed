"""A fuzz pass over recipe YAML: random mutations of a valid recipe, run through `ssam merge` in-process.

The only outcomes allowed: exit 0 with an output that verifies (valid JSON manifest, every weight file loads and is
finite), or exit 2 with exactly one line on stderr. Inputs are never changed. Bounded and quick (hypothesis).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fixtures.tiny import make_base, make_full_specialist, make_lora_specialist  # noqa: E402
from tests.writers.test_atomic import tree_hash  # noqa: E402

VALID = {"method": "ssam", "base": "base",
         "specialists": [{"name": "a", "path": "a"}, {"name": "c", "path": "c", "weight": 0.5}],
         "parameters": {"rank": 4}, "output": {"path": "out", "format": "full"}, "device": "cpu", "seed": 0}

# Values a careless user types; no `org/name` shape, which would be a Hub repo id (no network in tests).
VALUES = [None, True, False, 0, 1, -1, 4, 10**12, 0.5, -0.5, 1e-5, float("nan"), float("inf"), -float("inf"), "",
          " ", ".", "..", "a", "c", "base", "out", "x" * 300, "ssam", "ties", "wudi", "average", "lora", "full",
          "modelcompose", "dense", "core", "cuda:7", "5GB", "0B", "*", "*q_proj*", [], ["*mlp*"], {}, {"rank": 2},
          [{"name": "a", "path": "a"}], [{"pattern": "*q_proj*", "parameters": {"rank": 2}}]]
KEYS = ["method", "base", "specialists", "parameters", "space", "modules", "output", "device", "seed", "colour",
        "path", "name", "weight", "format", "modality", "revision", "rank", "lambda", "exact", "density", "p",
        "iterations", "dtype", "shard_size", "keep", "average", "overrides", "pattern", "trim"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    base = make_base(root / "base", layers=1)
    make_lora_specialist(root / "a", seed=1, layers=1)
    make_full_specialist(root / "c", base, seed=3)
    return root


def containers(node: Any) -> list[Any]:
    """Every dict and list inside a recipe, the recipe included."""
    found = [node]
    for child in (node.values() if isinstance(node, dict) else node if isinstance(node, list) else []):
        if isinstance(child, (dict, list)):
            found += containers(child)
    return found


# Changes that keep the recipe valid, so that merges with verified outputs are among the outcomes.
GOOD = [{"method": m, "parameters": {}} for m in ("task_arithmetic", "average", "ties", "dare_linear", "tsv",
                                                  "iso_c")] + [
    {"parameters": {}}, {"parameters": {"rank": 1}}, {"seed": 7}, {"space": "core"}, {"device": "auto"},
    {"output": {"path": "o2", "format": "full", "dtype": "bfloat16", "shard_size": "10KB"}},
    {"modules": {"average": ["*down_proj*"]}},
    {"modules": {"overrides": [{"pattern": "*q_proj*", "parameters": {"rank": 2}}]}}]


@st.composite
def mutated_recipes(draw: st.DrawFn) -> bytes:
    data = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["good", "good", "value", "delete"]))
        if kind == "good":
            data.update(json.loads(json.dumps(draw(st.sampled_from(GOOD)))))
            continue
        node = draw(st.sampled_from(containers(data)))
        if isinstance(node, dict):
            key = draw(st.sampled_from(sorted(node) + KEYS))
            if kind == "delete" and key in node:
                del node[key]
            else:
                node[key] = draw(st.sampled_from(VALUES))
        elif node:
            node[draw(st.integers(0, len(node) - 1))] = draw(st.sampled_from(VALUES))
    text = yaml.safe_dump(data, sort_keys=False).encode()
    edit = draw(st.sampled_from(["none"] * 4 + ["duplicate a line", "insert", "delete", "bytes"]))
    if edit == "none" or not text:
        return text
    lines = text.splitlines(keepends=True)
    at = draw(st.integers(0, len(text) - 1))
    if edit == "duplicate a line":
        i = draw(st.integers(0, len(lines) - 1))
        return b"".join(lines[:i + 1] + lines[i:])
    if edit == "insert":
        return text[:at] + draw(st.sampled_from([b":", b"-", b" ", b"{", b"]", b"'", b"\t", b"\n", b"&", b"*"])) + text[at:]
    if edit == "delete":
        return text[:at] + text[at + 1:]
    return text[:at] + b"\xff\xfe" + text[at:]


def run_cli(*argv: str) -> tuple[int, str]:
    """`ssam ARGV` in-process: (exit code, stderr)."""
    from ssam_cli.cli import main

    err = io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    old_argv = sys.argv
    sys.argv = ["ssam", *argv]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old_argv
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, err.getvalue()


def verify_output(folder: Path) -> None:
    from safetensors.torch import load_file

    def no_constant(name: str) -> None:
        raise AssertionError(f"manifest.json holds {name}, which is not JSON")

    json.loads((folder / "manifest.json").read_text(), parse_constant=no_constant)
    weights = list(folder.rglob("*.safetensors"))
    assert weights, "no weight file"
    for f in weights:
        for name, t in load_file(str(f)).items():
            assert not t.is_floating_point() or bool(t.isfinite().all()), f"{f.name}: {name} is not finite"


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=mutated_recipes())
def test_a_mutated_recipe_merges_and_verifies_or_is_one_line_exit_2(shared, text):
    before = {name: tree_hash(shared / name) for name in ("base", "a", "c")}
    with tempfile.TemporaryDirectory(dir=shared) as work:
        work = Path(work)
        for name in before:
            (work / name).symlink_to(shared / name)
        recipe = work / "recipe.yaml"
        recipe.write_bytes(text)
        code, err = run_cli("merge", str(recipe), "-q")
        hypothesis.event(f"exit {code}")  # shown by --hypothesis-show-statistics
        assert "Traceback" not in err
        if code == 0:
            from ssam_cli.recipe import load_recipe

            verify_output(load_recipe(recipe).output_path)
        else:
            assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), (code, err)
    assert {name: tree_hash(shared / name) for name in before} == before


def test_the_unmutated_recipe_merges(shared, tmp_path):
    for name in ("base", "a", "c"):
        (tmp_path / name).symlink_to(shared / name)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(VALID))
    assert run_cli("merge", str(tmp_path / "recipe.yaml"), "-q") == (0, "")
    verify_output(tmp_path / "out")
    assert math.isfinite(json.loads((tmp_path / "out" / "manifest.json").read_text())["summary"]["seconds"])
