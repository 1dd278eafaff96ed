"""Where a full multimodal checkpoint holds the base's text decoder: one prefix rewrite per specialist.

A wrapped checkpoint holds exactly the tensors of the text-only base, under other names:
  llava-hf saved by transformers < 4.52, and Qwen2-Audio: `language_model.` before every base name
      (`language_model.model.layers.0.…`, `language_model.lm_head.weight`);
  llava-hf saved by transformers ≥ 4.52: `model.language_model.` in place of `model.` (`lm_head.weight` as in the
      base).
The rewrite is found from names alone. Candidates come from where the base's names end inside the specialist's
names; the one rewrite that puts *every* base tensor at a name the specialist holds is chosen. A tower whose layers
end like decoder layers (`vision_tower.encoder.layers.0.self_attn.q_proj.weight`) yields a candidate too, but it
cannot place the embeddings, the final norm or the head, so it is never chosen: no tensor is paired by its suffix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

from ssam_cli.errors import InputError

WRAPPER_HINT = "state it in the recipe with decoder: {prefix: ..., replaces: ...} on this specialist"


@dataclass(frozen=True)
class DecoderMap:
    """Base name → the specialist's name: a base name starting with `replaces` gets `prefix` in its place, every
    other base name is the same in the specialist (`replaces: ""` puts `prefix` before every name)."""

    prefix: str = ""
    replaces: str = ""

    @property
    def identity(self) -> bool:
        return self.prefix == self.replaces

    def __call__(self, base_name: str) -> str:
        if base_name.startswith(self.replaces):
            return self.prefix + base_name[len(self.replaces):]
        return base_name

    def describe(self) -> str:
        """The rule as `ssam validate` prints it and the manifest records it."""
        if self.identity:
            return "the base's own names"
        if self.replaces:
            return f"{self.replaces}* → {self.prefix}* (other names as in the base)"
        return f"* → {self.prefix}*"


IDENTITY = DecoderMap()


def missing_under(mapping: DecoderMap, required: Iterable[str], names: Collection[str]) -> list[str]:
    """The base tensors `mapping` puts at no name the specialist holds (as the specialist would name them)."""
    return [mapping(b) for b in required if mapping(b) not in names]


def candidates(base_names: Sequence[str], names: Collection[str]) -> list[DecoderMap]:
    """Every rewrite under which some base tensor of the first block (or outside the blocks) lands on a specialist
    tensor: `replaces` is "" or the base name's first part, `prefix` whatever precedes the rest in the specialist."""
    from ssam_cli.plan import layer_of

    found: dict[DecoderMap, None] = {IDENTITY: None}
    anchors = [b for b in base_names if layer_of(b) <= 0]
    for b in anchors:
        parts = b.split(".")
        replaced = [""] + ([parts[0] + "."] if len(parts) > 2 else [])
        for q in replaced:
            tail = b[len(q):]
            for s in names:
                if s == tail:
                    found.setdefault(DecoderMap("", q), None)
                elif s.endswith("." + tail):
                    found.setdefault(DecoderMap(s[: len(s) - len(tail)], q), None)
    # rewrites that place the base's tensors identically are one candidate: keep the first (shortest `replaces`)
    distinct: dict[tuple[str, ...], DecoderMap] = {}
    for m in sorted(found, key=lambda m: (not m.identity, len(m.replaces), m.prefix)):
        distinct.setdefault(tuple(m(b) for b in base_names), m)
    return list(distinct.values())


def find_decoder(base_names: Sequence[str], required: Sequence[str], names: Collection[str],
                 where: str) -> DecoderMap:
    """The one rewrite that places every `required` base tensor at a specialist tensor; InputError (one line,
    naming the specialist, a tensor and the candidates) when none does or several do."""
    scored = [(m, missing_under(m, required, names)) for m in candidates(base_names, names)]
    complete = [m for m, missing in scored if not missing]
    if len(complete) == 1:
        return complete[0]
    if complete:
        listed = "; ".join(m.describe() for m in complete)
        raise InputError(f"{where}: the base's decoder fits under {len(complete)} name rewrites ({listed}); "
                         f"{WRAPPER_HINT}")
    scored.sort(key=lambda item: len(item[1]))
    best, missing = scored[0]
    others = "; ".join(m.describe() for m, _ in scored[1:4])
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise InputError(f"{where}: tensor {missing[0]} of the base is missing{more} (names: {best.describe()}"
                     + (f"; other candidates: {others}" if others else "")
                     + f"); if the decoder is there under other names, {WRAPPER_HINT}")


def check_decoder(mapping: DecoderMap, required: Sequence[str], names: Collection[str], where: str) -> DecoderMap:
    """A rewrite the recipe states: every required base tensor must be where it says."""
    missing = missing_under(mapping, required, names)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{where}: decoder: {mapping.describe()}: tensor {missing[0]} is not in the "
                         f"checkpoint{more}")
    return mapping
