"""The one registry of merge methods: recipe name → MethodSpec. Add a method by adding its module here."""

from __future__ import annotations

from ssam_cli.methods import average, dare, iso, optmerge, ssam, task_arithmetic, ties, tsv, wudi
from ssam_cli.methods.base import MethodSpec

REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (ssam.SPEC, task_arithmetic.SPEC, average.SPEC, ties.SPEC, dare.LINEAR_SPEC, dare.TIES_SPEC,
                 tsv.SPEC, iso.C_SPEC, iso.CTS_SPEC, wudi.SPEC, optmerge.SPEC)
}
