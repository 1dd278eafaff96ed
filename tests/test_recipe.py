"""Bad recipes give one line naming the file, the field and what was expected; good ones resolve paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssam_cli.errors import RecipeError
from ssam_cli.recipe import load_recipe, parse_size

GOOD = {"method": "ssam", "base": "./base", "specialists": [{"name": "a", "path": "./a"}, {"name": "b", "path": "b"}],
        "output": {"path": "out"}}


def write(tmp_path: Path, data) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def with_(**changes):
    d = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        node = d
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value
    return d


@pytest.mark.parametrize("data, expected", [
    (with_(parameters={"rank": -3}), "recipe.yaml: parameters.rank: must be a positive integer, got -3"),
    (with_(parameters={"rank": "big"}), "recipe.yaml: parameters.rank: must be an integer, got 'big'"),
    (with_(parameters={"rnak": 3}), "recipe.yaml: parameters.rnak: unknown key"),
    (with_(method="magic"), "recipe.yaml: method: must be one of"),
    (with_(colour="red"), "recipe.yaml: colour: unknown key"),
    (with_(output={"path": "o", "format": "onnx"}), "recipe.yaml: output.format: must be one of"),
    (with_(output={"path": "o", "shard_size": "lots"}), "recipe.yaml: output.shard_size: must be a size like 5GB"),
    (with_(device="tpu"), "recipe.yaml: device: must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (with_(specialists=[]), "recipe.yaml: specialists: must list at least one specialist"),
    (with_(specialists=[{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]), "specialists: names must be unique"),
    (with_(specialists__1__weight=0), "recipe.yaml: specialists[1].weight: must be greater than 0.0, got 0"),
    (with_(specialists__0__name="a/b"), "recipe.yaml: specialists[0].name: must be letters"),
    ({k: v for k, v in GOOD.items() if k != "base"}, "recipe.yaml: base: is required"),
    (with_(modules={"overrides": [{"pattern": "*q_proj*", "parameters": {"rank": 0}}]}),
     "recipe.yaml: modules.overrides[0].parameters.rank: must be a positive integer, got 0"),
    ("method: [unclosed", "recipe.yaml: not valid YAML at line"),
    ("- just\n- a list\n", "recipe.yaml: must be a mapping of recipe keys, got list"),
])
def test_bad_recipes_give_one_line_naming_file_and_field(tmp_path, data, expected):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, data))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(str(tmp_path)) and expected in message


def test_paths_resolve_against_the_recipe_folder(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    assert r.local_path(r.base) == (tmp_path / "base").resolve()
    assert r.local_path(r.specialists[1]) == (tmp_path / "b").resolve()
    assert r.output_path == (tmp_path / "out").resolve()


def test_overrides_apply_by_glob_and_last_match_wins(tmp_path):
    r = load_recipe(write(tmp_path, with_(parameters={"rank": 64, "lambda": 0.5}, modules={"overrides": [
        {"pattern": "*.mlp.*", "parameters": {"rank": 32}},
        {"pattern": "*.down_proj.*", "parameters": {"rank": 16}}]})))
    assert r.method_params("model.layers.0.self_attn.q_proj.weight").rank == 64
    assert r.method_params("model.layers.0.mlp.up_proj.weight").rank == 32
    down = r.method_params("model.layers.0.mlp.down_proj.weight")
    assert down.rank == 16 and down.lam == 0.5


def test_defaults(tmp_path):
    """What a minimal recipe means (docs/recipe.md): every key it leaves out takes its documented default."""
    r = load_recipe(write(tmp_path, {"base": "./base", "specialists": [{"name": "a", "path": "./a"}],
                                     "output": {"path": "out"}}))
    assert (r.method, r.space, r.device, r.seed, r.parameters) == ("ssam", "dense", "auto", 0, {})
    assert (r.output.format, r.output.dtype, r.output.shard_size) == ("full", "auto", 5 * 10**9)
    a = r.specialists[0]
    assert (a.weight, a.format, a.modality, a.revision, a.encoders) == (1.0, "auto", None, None, {})
    assert r.base.revision is None
    assert (r.modules.keep, r.modules.average, r.modules.overrides) == ([], [], [])
    params = r.method_params("model.layers.0.self_attn.q_proj.weight")
    assert (params.rank, params.lam, params.exact) == (128, None, False)  # λ None: 1/n, the paper's mean


def test_sizes():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2MiB") == 2 * 2**20 and parse_size(1024) == 1024
    assert parse_size("1.5 kB") == 1500 and parse_size("3TiB") == 3 * 2**40


def test_as_run_records_absolute_paths(tmp_path):
    (tmp_path / "base").mkdir()
    run = load_recipe(write(tmp_path, GOOD)).as_run()
    assert run["base"]["path"] == str((tmp_path / "base").resolve())
    assert run["specialists"][0]["path"] == "./a"  # not on disk: kept as written
