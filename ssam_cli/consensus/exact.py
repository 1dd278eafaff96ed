"""The exact consensus spectrum of dense updates: the float64 Gram of the short side of the stacked matrix."""

from __future__ import annotations

from typing import Sequence

import torch

from ssam_cli.spectra import Spectrum


def left_singular_of_blocks(blocks: Sequence[torch.Tensor]) -> Spectrum:
    """Exact left spectrum of M = [X_1 | … | X_n] via the float64 Gram of its short side."""
    M = torch.cat([b.double() for b in blocks], dim=1)
    m, p = M.shape
    if m <= p:
        evals, evecs = torch.linalg.eigh(M @ M.T)
        order = torch.argsort(evals, descending=True)
        values = evals[order].clamp_min(0).sqrt()
        vectors = evecs[:, order]
    else:
        Q, R = torch.linalg.qr(M)
        Ur, values, _ = torch.linalg.svd(R)
        vectors = Q @ Ur
    return Spectrum(vectors.to(blocks[0].dtype), values, (m, p))
