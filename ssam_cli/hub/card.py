"""The model card (README.md) of a merge, written from its manifest alone so it can be regenerated at any time.

Deterministic: the same manifest (and repo id) gives the same bytes, which keeps `ssam push` idempotent.
Front matter follows the Hub's model-card metadata: Hub inputs go in `base_model` with
`base_model_relation: merge`; inputs that exist only on the merging machine are named in the body instead.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Optional

import yaml

from ssam_cli.card_metadata import CARD, front_matter, read_license
from ssam_cli.hub.repo_id import HF_PREFIX, is_repo_id

CARD = "README.md"

def hub_id(row: dict[str, Any], recipe_path: Optional[str] = None) -> Optional[str]:
    """The Hub repo id of a manifest input, or None for a local-only input.

    An input is on the Hub when the manifest recorded its repo id, or recorded a commit for a recipe path that
    is a repo id; a local folder never has a commit.
    """
    if row.get("repo_id"):
        return str(row["repo_id"])
    path = recipe_path or ""
    path = path[len(HF_PREFIX):] if path.startswith(HF_PREFIX) else path
    return path if row.get("commit") and is_repo_id(path) else None


def _inputs(manifest: dict[str, Any]) -> tuple[Optional[dict[str, Any]], list[dict[str, Any]]]:
    rows = manifest.get("inputs") or []
    base = next((r for r in rows if r.get("role") == "base"), None)
    return base, [r for r in rows if r.get("role") == "specialist"]


def _recipe_paths(manifest: dict[str, Any]) -> dict[str, str]:
    """Input name → `path:` as the recipe wrote it (or as run), to recognise Hub ids."""
    recipe = manifest.get("recipe") or {}
    out: dict[str, str] = {}
    base = recipe.get("base")
    if isinstance(base, dict) and base.get("path"):
        out["base"] = str(base["path"])
    elif isinstance(base, str):
        out["base"] = base
    for s in recipe.get("specialists") or []:
        if isinstance(s, dict) and s.get("name"):
            out[str(s["name"])] = str(s.get("path", ""))
    return out


def _modalities(manifest: dict[str, Any], specialists: list[dict[str, Any]]) -> list[str]:
    kept = [m for m in (manifest.get("modalities") or {}).values() if isinstance(m, dict)]
    found = [r.get("modality") for r in specialists] + [m.get("modality") for m in kept]
    return list(dict.fromkeys(str(m) for m in found if m))


def metadata(manifest: dict[str, Any]) -> dict[str, Any]:
    """The card's front matter: base_model (+ relation), tags, library_name, license when the base has one."""
    base, specialists = _inputs(manifest)
    paths = _recipe_paths(manifest)
    ids = [hub_id(r, paths.get(str(r.get("name")))) for r in ([base] if base else []) + specialists]
    method = str(manifest.get("method", "merge"))
    tags = list(dict.fromkeys(["merge", "ssam", "model-merging", method.replace("_", "-"),
                               *_modalities(manifest, specialists)]))
    meta: dict[str, Any] = {}
    hub_ids = list(dict.fromkeys(i for i in ids if i))
    if hub_ids:
        meta["base_model"] = hub_ids
        meta["base_model_relation"] = "merge"
    meta["library_name"] = "peft" if (manifest.get("output") or {}).get("format") == "lora" else "transformers"
    license_ = _license(base)
    if license_:
        meta["license"] = license_
    meta["tags"] = tags
    return meta


def _license(base: Optional[dict[str, Any]]) -> Optional[str]:
    if not base:
        return None
    if base.get("license"):
        return str(base["license"])
    path = Path(str(base.get("path", "")))
    return read_license(path if path.is_dir() else path.parent) if base.get("path") else None


def model_card(manifest: dict[str, Any], repo_id: Optional[str] = None) -> str:
    """README.md text for the merge the manifest describes; `repo_id` (when pushing) goes in the loading code."""
    meta = metadata(manifest)
    base, specialists = _inputs(manifest)
    paths = _recipe_paths(manifest)
    method = str(manifest.get("method", "?"))
    title = repo_id.split("/")[-1] if repo_id else "Merged model"
    where = repo_id or "path/to/this/folder"
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip("\n"), "---", "",
             f"# {title}", ""]
    base_name = _describe_input(base, paths.get("base")) if base else "the base model"
    lines += [f"A training-free merge of {len(specialists)} specialist(s) of {base_name}, made with "
              f"ssam {manifest.get('version', '')} using **{method}**{_paper_link(manifest)}.", ""]
    lines += _method_section(manifest, method)
    lines += _inputs_section(base, specialists, paths)
    lines += _modalities_section(manifest)
    lines += _loading_section(manifest, meta, where)
    lines += _spectrum_section(manifest)
    lines += _recipe_section(manifest)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_model_card(output_dir: Path, manifest: dict[str, Any], repo_id: Optional[str] = None) -> Path:
    """Write README.md into an output folder (the manifest does not list it, so rewriting it is always safe)."""
    path = output_dir / CARD
    path.write_text(model_card(manifest, repo_id), encoding="utf-8")
    return path


def _paper_link(manifest: dict[str, Any]) -> str:
    """The paper of the method, as the merge recorded it from the method registry (MethodSpec.paper)."""
    paper = manifest.get("paper") or {}
    if not paper.get("title"):
        return ""
    return f" ([{paper['title']}]({paper['url']}))" if paper.get("url") else f" ({paper['title']})"


def _describe_input(row: dict[str, Any], recipe_path: Optional[str]) -> str:
    rid = hub_id(row, recipe_path)
    if rid:
        commit = row.get("commit")
        return f"[{rid}](https://huggingface.co/{rid})" + (f" @ `{commit[:12]}`" if commit else "")
    return f"`{row.get('path', '?')}` (local)"


def _method_section(manifest: dict[str, Any], method: str) -> list[str]:
    params = manifest.get("parameters") or {}
    merged = [t for t in (manifest.get("tensors") or {}).values() if isinstance(t, dict) and t.get("role") == "merge"]
    lambdas = sorted({round(float(t["lambda"]), 6) for t in merged if t.get("lambda") is not None})
    lines = ["## Method", "", "| parameter | value |", "|---|---|", f"| method | `{method}` |"]
    if "rank" in params:
        lines.append(f"| k (consensus rank) | {params['rank']} |")
    lam = params.get("lambda")
    if lam is None and lambdas:
        lam = ", ".join(f"{x:g}" for x in lambdas) + " (default: 1/n)"
    if lam is not None or "lambda" in params:
        lines.append(f"| λ (scale) | {lam if lam is not None else 'method default'} |")
    for key, value in params.items():
        if key not in ("rank", "lambda"):
            lines.append(f"| {key} | {value} |")
    lines += [f"| seed | {manifest.get('seed', '?')} |", f"| device | {manifest.get('device', '?')} |",
              f"| output | {(manifest.get('output') or {}).get('format', '?')}, "
              f"{(manifest.get('output') or {}).get('dtype', '?')} |", ""]
    return lines


def _inputs_section(base: Optional[dict[str, Any]], specialists: list[dict[str, Any]],
                    paths: dict[str, str]) -> list[str]:
    lines = ["## Inputs", "", "| role | name | source | modality | weight | kind |", "|---|---|---|---|---|---|"]
    local: list[str] = []
    for row in ([base] if base else []) + specialists:
        name = str(row.get("name", "?"))
        if not hub_id(row, paths.get(name)):
            local.append(name)
        weight = row.get("weight", "—") if row.get("role") != "base" else "—"
        lines.append(f"| {row.get('role', '?')} | {name} | {_describe_input(row, paths.get(name))} | "
                     f"{row.get('modality') or '—'} | {weight} | {row.get('kind', '?')} |")
    lines.append("")
    if local:
        lines += [f"Not on the Hub, so not listed in `base_model`: {', '.join(local)} (local folders on the machine "
                  "that merged; their files' sha256 are in `manifest.json`).", ""]
    return lines


def _modalities_section(manifest: dict[str, Any]) -> list[str]:
    mods = manifest.get("modalities") or {}
    if not mods:
        return []
    lines = ["## Modality files", "",
             "Modality-specific weights (encoders, projectors) are never merged: each specialist's own are kept, "
             "untouched, beside the merged language model.", "",
             "| specialist | modality | file | tensors |", "|---|---|---|---|"]
    for name, m in sorted(mods.items()):
        count = len(m.get("tensors") or [])
        lines.append(f"| {name} | {m.get('modality') or '—'} | `{m.get('file', '?')}` | {count} |")
    first = next(iter(sorted(mods.items())))[1].get("file", "modalities/<name>.safetensors")
    lines += ["", "Load one next to the merged model (tensor names are those of the specialist's checkpoint):", "",
              "```python", "from safetensors.torch import load_file", "",
              f'modality_weights = load_file("{first}")',
              "missing, unexpected = model.load_state_dict(modality_weights, strict=False)", "```", ""]
    return lines


def _loading_section(manifest: dict[str, Any], meta: dict[str, Any], where: str) -> list[str]:
    lines = ["## How to load", "", "```python"]
    if meta["library_name"] == "peft":
        base_ids = meta.get("base_model") or ["<base model>"]
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
                  f'base = AutoModelForCausalLM.from_pretrained("{base_ids[0]}")',
                  f'model = PeftModel.from_pretrained(base, "{where}")']
    else:
        lines += ["from transformers import AutoModelForCausalLM", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{where}")']
    return lines + ["```", ""]


def _spectrum_section(manifest: dict[str, Any]) -> list[str]:
    merged = [t for t in (manifest.get("tensors") or {}).values() if isinstance(t, dict) and t.get("role") == "merge"]
    counts = (manifest.get("summary") or {}).get("tensors") or {}
    lines = ["## Spectrum summary", ""]
    if counts:
        lines += ["Tensors by role: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".", ""]
    rows = [("rank used (k)", [t.get("rank_used") for t in merged]),
            ("energy captured, left", [t.get("energy_left") for t in merged]),
            ("energy captured, right", [t.get("energy_right") for t in merged]),
            ("‖merged Δ‖ / ‖Σ Δ_i‖", [t["norm_merged"] / t["norm_sum"] for t in merged
                                     if t.get("norm_merged") is not None and t.get("norm_sum")])]
    rows = [(label, [float(v) for v in values if isinstance(v, (int, float))]) for label, values in rows]
    rows = [(label, values) for label, values in rows if values]
    if not rows:
        return lines + ["The method reported no per-weight spectrum figures; see `manifest.json`.", ""]
    lines += [f"Over the {len(merged)} merged weights (per weight figures in `manifest.json`):", "",
              "| figure | min | median | max |", "|---|---|---|---|"]
    for label, values in rows:
        lines.append(f"| {label} | {_fmt(min(values))} | {_fmt(statistics.median(values))} | {_fmt(max(values))} |")
    capped = sum(1 for t in merged if t.get("rank_capped"))
    if capped:
        lines += ["", f"k was capped at the numerical rank for {capped} weight(s) (never padded with noise)."]
    return lines + [""] + _suggested_k(manifest)


def _suggested_k(manifest: dict[str, Any]) -> list[str]:
    """The k `ssam inspect-spectrum` would suggest for these specialists, when the merge computed the spectrum."""
    suggested = (manifest.get("spectrum") or {}).get("suggested_k")
    if not isinstance(suggested, dict) or "model" not in suggested:
        return []
    by_module = ", ".join(f"{m} {k}" for m, k in (suggested.get("by_module") or {}).items())
    return [f"Suggested k for these specialists: **{suggested['model']}**" + (f" (per module: {by_module})" if by_module
            else "") + f". Rule: {suggested.get('rule', '')}", ""]


def _fmt(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() else f"{x:.4g}"


def _recipe_section(manifest: dict[str, Any]) -> list[str]:
    text = manifest.get("recipe_text")
    if text:
        body, label = str(text).rstrip("\n"), "The recipe, verbatim:"
    else:
        body = yaml.safe_dump(manifest.get("recipe") or {}, sort_keys=False, allow_unicode=True).rstrip("\n")
        label = "The recipe as run (paths resolved):"
    fence = "````" if "```" in body else "```"
    return ["## Recipe", "", label, "", f"{fence}yaml", body, fence, "",
            f"Reproduce with `ssam merge recipe.yaml` (ssam {manifest.get('version', '?')}); every input file's "
            "sha256 and every Hub input's commit are in `manifest.json`.", ""]
