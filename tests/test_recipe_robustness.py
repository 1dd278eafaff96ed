"""Recipes a careless user writes: duplicate keys, booleans for numbers, NaN and infinity, empty or looping paths,
bytes that are not UTF-8. Each is one RecipeError naming the file and the field, never a silent guess."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssam_cli.errors import RecipeError
from ssam_cli.recipe import load_recipe

GOOD = """\
method: {method}
base: ./base
specialists:
  - {{name: a, path: ./a{weight}}}
parameters: {{{parameters}}}
output: {{path: {output}}}
"""


def recipe(tmp_path: Path, method: str = "ssam", parameters: str = "rank: 4", weight: str = "",
           output: str = "out") -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(GOOD.format(method=method, parameters=parameters, weight=weight, output=output))
    return p


def refused(path: Path) -> str:
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


@pytest.mark.parametrize("text, expected", [
    ("method: ssam\nmethod: ties\n", "not valid YAML at line 2: duplicate key 'method'"),
    (GOOD.format(method="ssam", parameters="rank: 4, rank: 8", weight="", output="o"),
     "not valid YAML at line 5: duplicate key 'rank'"),
])
def test_duplicate_keys_are_errors(tmp_path, text, expected):
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    assert refused(p) == expected


def test_merge_keys_may_still_be_overridden(tmp_path):
    p = tmp_path / "recipe.yaml"
    p.write_text("base: ./base\nspecialists: [{name: a, path: ./a}]\noutput: {path: out}\n"
                 "parameters: {<<: {rank: 4, lambda: 0.5}, rank: 8}\n")
    params = load_recipe(p).method_params()
    assert params.rank == 8 and params.lam == 0.5


@pytest.mark.parametrize("parameters, weight, expected", [
    ("rank: true", "", "parameters.rank: must be an integer, got True"),
    ("rank: 4.0", "", "parameters.rank: must be an integer, got 4.0"),
    ("rank: '4'", "", "parameters.rank: must be an integer, got '4'"),
    ("rank: 4, exact: 1", "", "parameters.exact: must be true or false, got 1"),
    ("rank: 4, lambda: true", "", "parameters.lambda: must be a number or one of 'auto', got True"),
    ("rank: 4, lambda: .nan", "", "parameters.lambda: must be a finite number or one of 'auto', got nan"),
    ("rank: 4, lambda: .inf", "", "parameters.lambda: must be a finite number or one of 'auto', got inf"),
    ("rank: 4, lambda: -.inf", "", "parameters.lambda: must be a finite number or one of 'auto', got -inf"),
    ("rank: 4", ", weight: .inf", "specialists[0].weight: must be a finite number, got inf"),
    ("rank: 4", ", weight: .nan", "specialists[0].weight: must be a finite number, got nan"),
    ("rank: 4", ", weight: true", "specialists[0].weight: must be a number, got True"),
])
def test_numbers_are_strict_and_finite(tmp_path, parameters, weight, expected):
    assert refused(recipe(tmp_path, parameters=parameters, weight=weight)) == expected


def test_an_override_is_held_to_the_same_rules(tmp_path):
    p = recipe(tmp_path)
    p.write_text(p.read_text() + "modules: {overrides: [{pattern: '*q_proj*', parameters: {lambda: .nan}}]}\n")
    assert refused(p) == "modules.overrides[0].parameters.lambda: must be a finite number or one of 'auto', got nan"


@pytest.mark.parametrize("parameters, expected", [
    ("lr: .nan", "parameters.lr: must be a finite number, got nan"),
    ("iterations: true", "parameters.iterations: must be an integer, got True"),
])
def test_every_method_parameter_is_strict_and_finite(tmp_path, parameters, expected):
    assert refused(recipe(tmp_path, method="wudi", parameters=parameters)) == expected


def test_exponents_without_a_dot_are_numbers_as_in_yaml_1_2(tmp_path):
    params = load_recipe(recipe(tmp_path, method="wudi", parameters="lr: 1e-5, lambda: 2E+0")).method_params()
    assert params.lr == 1e-5 and params.lam == 2.0


@pytest.mark.parametrize("output", ['""', "'  '"])
def test_an_empty_output_path_is_refused_without_suggesting_overwrite(tmp_path, output):
    message = refused(recipe(tmp_path, output=output))
    assert message == "output.path: must name the output folder (e.g. ./merged), got an empty string"


def test_a_symlink_loop_is_named_with_its_field(tmp_path):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    assert "output.path: loop1/out: cannot resolve the path" in refused(recipe(tmp_path, output="loop1/out"))
    p = tmp_path / "recipe.yaml"
    p.write_text(p.read_text().replace("path: ./a", "path: ./loop2"))
    assert refused(p).startswith("specialists[0].path: ./loop2: cannot resolve the path")


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path):
    p = recipe(tmp_path)
    p.write_bytes(p.read_bytes().replace(b"out", b"\xe9t\xe9"))
    assert refused(p) == "not UTF-8 text (byte 0xe9 on line 6)"


def test_a_folder_or_a_missing_file_as_recipe_is_one_line(tmp_path):
    assert refused(tmp_path) == "cannot read: Is a directory"
    assert refused(tmp_path / "missing.yaml") == "cannot read: No such file or directory"
