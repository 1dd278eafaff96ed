"""The recipe: a YAML file validated into pydantic models, with errors that name the file and the field.

Validation is pure (no tensor is read): structure here, method parameters through the method's own model,
paths resolved against the recipe's folder.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ssam_cli.errors import RecipeError
from ssam_cli.paths import resolve_local

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
Space = Literal["dense", "factor", "core"]  # where a method merges LoRA specialists (ssam_cli/spaces.py)


class _Strict(BaseModel):
    # strict: YAML already gives every value its type, so `rank: true` or `weight: "2"` is a mistake, never a 1 or
    # a 2.0; allow_inf_nan=False: `.nan` and `.inf` are no weight or scale.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True, allow_inf_nan=False)


class ModelRef(_Strict):
    """A checkpoint: a local folder (relative to the recipe) or a Hub repo id, with an optional revision, and
    optionally a folder inside it (`subfolder:`, as transformers' `from_pretrained(..., subfolder=...)`)."""

    path: str
    revision: Optional[str] = None
    subfolder: Optional[str] = None

    @field_validator("path")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a folder or a Hub repo id, got an empty string")
        return v

    @field_validator("subfolder")
    @classmethod
    def _relative_folder(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        parts = v.rstrip("/").split("/")
        if "\\" in v or v.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"must be a folder inside the repo or folder, like vision-damc or a/b, got {v!r}")
        return v.rstrip("/")


class Decoder(_Strict):
    """Where a full multimodal checkpoint holds the base's decoder, when detection cannot tell (docs/hf-multimodal.md):
    base names starting with `replaces` get `prefix` in its place (`replaces: ""`: `prefix` before every name)."""

    prefix: str
    replaces: str = ""


class Specialist(ModelRef):
    """One fine-tuned specialist of the base."""

    name: str
    weight: float = Field(default=1.0, gt=0.0)
    modality: Optional[str] = None
    format: Literal["auto", "full", "lora", "modelcompose"] = "auto"
    encoders: dict[str, str] = Field(default_factory=dict, description="config key → new encoder path (ModelCompose)")
    decoder: Optional[Decoder] = None

    @field_validator("name")
    @classmethod
    def _file_safe(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"must be letters, digits, '_', '-' or '.', usable as a file name, got {v!r}")
        return v


class Override(_Strict):
    """Different method parameters for the tensors whose names match `pattern` (a glob)."""

    pattern: str
    parameters: dict[str, Any]


class Modules(_Strict):
    """Glob patterns over tensor names."""

    keep: list[str] = Field(default_factory=list, description="modality-specific: kept per specialist, never merged")
    average: list[str] = Field(default_factory=list, description="2-D tensors to average instead of merge")
    overrides: list[Override] = Field(default_factory=list)


class Output(_Strict):
    path: str
    format: str = Field(default="full", description="an output format of ssam_cli/outputs (full, lora, modelcompose)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    shard_size: Union[int, str] = Field(default="5GB", validate_default=True)

    @field_validator("shard_size")
    @classmethod
    def _size(cls, v: Union[int, str]) -> int:
        return parse_size(v)

    @field_validator("format")
    @classmethod
    def _format_known(cls, v: str) -> str:
        from ssam_cli.outputs import FORMATS

        if v not in FORMATS:
            raise ValueError(f"must be one of {', '.join(FORMATS)}, got {v!r}")
        return v

    @field_validator("path")
    @classmethod
    def _names_a_folder(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name the output folder (e.g. ./merged), got an empty string")
        return v


class Recipe(_Strict):
    method: str = "ssam"
    base: ModelRef
    specialists: list[Specialist]
    parameters: dict[str, Any] = Field(default_factory=dict)
    space: Space = "dense"
    modules: Modules = Field(default_factory=Modules)
    output: Output
    device: str = "auto"
    seed: int = 0

    # Set by load_recipe, not by the YAML.
    source_file: Path = Field(default=Path("recipe.yaml"), exclude=True)
    source_text: str = Field(default="", exclude=True)  # verbatim, for the manifest and the model card

    @field_validator("base", mode="before")
    @classmethod
    def _base_string(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        from ssam_cli.device import check_device

        return check_device(v)

    @field_validator("specialists")
    @classmethod
    def _specialists(cls, v: list[Specialist]) -> list[Specialist]:
        if not v:
            raise ValueError("must list at least one specialist")
        seen: set[str] = set()
        for s in v:
            if s.name in seen:
                raise ValueError(f"names must be unique, {s.name!r} appears twice")
            seen.add(s.name)
        return v

    @model_validator(mode="after")
    def _method_known(self) -> "Recipe":
        from ssam_cli.methods import REGISTRY

        if self.method not in REGISTRY:
            raise ValueError(f"method: must be one of {', '.join(sorted(REGISTRY))}, got {self.method!r}")
        return self

    @property
    def folder(self) -> Path:
        return self.source_file.parent

    def local_path(self, ref: ModelRef) -> Path:
        """The path of a local input, resolved against the recipe's folder."""
        return resolve_local(self.folder, ref.path)

    @property
    def output_path(self) -> Path:
        return resolve_local(self.folder, self.output.path)

    @property
    def weights(self) -> list[float]:
        """The specialists' recipe weights, in recipe order (what every method and average receives)."""
        return [s.weight for s in self.specialists]

    def method_params(self, tensor_name: Optional[str] = None) -> BaseModel:
        """The method's validated parameters, with the last matching override applied for `tensor_name`."""
        from ssam_cli.methods import REGISTRY

        merged = dict(self.parameters)
        if tensor_name is not None:
            for o in self.modules.overrides:
                if fnmatch.fnmatchcase(tensor_name, o.pattern):
                    merged.update(o.parameters)
        return REGISTRY[self.method].params.model_validate(merged)

    def as_run(self) -> dict[str, Any]:
        """The recipe with every local path made absolute, for the manifest."""
        data = self.model_dump(mode="json", by_alias=True)
        data["base"]["path"] = _absolute_if_local(self, self.base)
        for s, spec in zip(data["specialists"], self.specialists):
            s["path"] = _absolute_if_local(self, spec)
        data["output"]["path"] = str(self.output_path)
        return data


def _absolute_if_local(recipe: Recipe, ref: ModelRef) -> str:
    p = recipe.local_path(ref)
    return str(p) if p.exists() else ref.path


def parse_size(v: Union[int, str]) -> int:
    """'5GB' → 5·10⁹ bytes, '500MiB' → 500·2²⁰; a plain integer is bytes."""
    if isinstance(v, bool):
        raise ValueError(f"must be a size like 5GB or 500MiB, got {v!r}")
    if isinstance(v, int):
        size = v
    else:
        m = _SIZE.match(v)
        if not m:
            raise ValueError(f"must be a size like 5GB or 500MiB, got {v!r}")
        size = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if size <= 0:
        raise ValueError(f"must be a positive size, got {v!r}")
    return size


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with two fixes for recipes: a key given twice is an error (PyYAML keeps the last one
    silently), and `1e-5` is a number as in YAML 1.2 (PyYAML's YAML 1.1 reads it as the string "1e-5")."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` merges, and explicit keys may override what it brings
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # an unhashable key: PyYAML's own error follows
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_recipe(path: Path) -> Recipe:
    """Read and validate a recipe; any problem is a RecipeError naming the file and the field."""
    label = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise RecipeError(label, "", f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        line = e.object.count(b"\n", 0, e.start) + 1
        raise RecipeError(label, "", f"not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line})") from None
    try:
        data = yaml.load(text, Loader=RecipeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(label, "", f"not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise RecipeError(label, "", f"must be a mapping of recipe keys, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate({**data, "source_file": Path(path).resolve(), "source_text": text})
    except ValidationError as e:
        field, message = describe_error(e)
        raise RecipeError(label, field, message) from None
    _check_paths(recipe, label)
    _check_parameters(recipe, label)
    return recipe


def _check_paths(recipe: Recipe, label: str) -> None:
    """Every path resolves (a symlink loop is named here, not met as a traceback later)."""
    refs = [("base.path", recipe.base.path), *((f"specialists[{i}].path", s.path)
                                                for i, s in enumerate(recipe.specialists)),
            ("output.path", recipe.output.path)]
    for field, text in refs:
        try:
            resolve_local(recipe.folder, text)
        except (OSError, RuntimeError) as e:  # RuntimeError: Python < 3.13's Path.resolve on a symlink loop
            reason = e.strerror if isinstance(e, OSError) and e.strerror else "symlink loop"
            raise RecipeError(label, field, f"{text}: cannot resolve the path: {reason}") from None


def _check_parameters(recipe: Recipe, label: str) -> None:
    try:
        recipe.method_params()
    except ValidationError as e:
        field, message = describe_error(e)
        raise RecipeError(label, _join("parameters", field), message) from None
    for i, o in enumerate(recipe.modules.overrides):
        try:
            from ssam_cli.methods import REGISTRY

            REGISTRY[recipe.method].params.model_validate({**recipe.parameters, **o.parameters})
        except ValidationError as e:
            field, message = describe_error(e)
            raise RecipeError(label, _join(f"modules.overrides[{i}].parameters", field), message) from None


def _join(prefix: str, field: str) -> str:
    return f"{prefix}.{field}" if field else prefix


# pydantic's names for a union's branches and validator wrappers in an error's location: not recipe fields.
_BRANCH = re.compile(r"^(str|int|float|bool|none|dict|list|tuple|literal\[.*\]|function-\w+(\[.*\])?)$")


def describe_error(e: ValidationError) -> tuple[str, str]:
    """The first pydantic error as (dotted field with [i] indices, plain-English expectation); where the field takes
    one of several types (a union), every branch's expectation, as in `must be a number or one of 'auto'`."""
    errors = e.errors()
    field = _field(errors[0]["loc"])
    branches = [err for err in errors if _field(err["loc"]) == field]
    if len(branches) == 1:
        return field, _message(branches[0])
    wanted = dict.fromkeys(_message(err).rsplit(", got ", 1)[0].removeprefix("must be ") for err in branches)
    return field, f"must be {' or '.join(wanted)}, got {branches[0].get('input')!r}"


def _field(loc: tuple[Any, ...]) -> str:
    field = ""
    for part in loc:
        if isinstance(part, int):
            field += f"[{part}]"
        elif not _BRANCH.match(str(part)):
            field = f"{field}.{part}" if field else str(part)
    return field


def _message(err: dict[str, Any]) -> str:
    kind, got, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key (see docs/recipe.md for the keys a recipe takes)"
    if kind == "missing":
        return "is required"
    if kind == "greater_than":
        return f"must be greater than {ctx.get('gt')}, got {got!r}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {got!r}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, got {got!r}"
    if kind == "finite_number":
        return f"must be a finite number, got {got!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {got!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got!r}"
    if kind in ("string_type",):
        return f"must be a string, got {got!r}"
    if kind in ("list_type",):
        return f"must be a list, got {got!r}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, got {got!r}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return err["msg"]
