"""The label holder's top model fitted on clean held-out rows (pure): `top_calibration` in a vertical
record-level DP job.

Under record-level DP the feature nodes' training embeddings reach the label holder with noise of
sd 3-20 × the clip (federated/vertical_dp.py), so a top model fitted on them underweights those
nodes; de-attenuating and recentring it (`vertical_dp.deattenuated`, `recentred`) recovers part of
that. The held-out rows' embeddings, though, arrive clipped and not noised: they are outside the DP
guarantee by design (they are what the job is evaluated on). With `top_calibration = s`, the label
holder splits its held-out rows by a hash of each pseudonym seeded with the job's public seed
(`calibration_rows`: a share `s`, reproducible from the job, whatever the rows' order), fits the
top (K·h + 1 weights) on the clean embeddings of that part by Newton steps (`calibrated_top`), and
scores only the other part.

What it changes: the top now depends on the calibration rows, which were already outside the
guarantee (their embeddings and labels are at the label holder); no feature node releases anything
more, and the top stays at the label holder (kept as `scored_top`; only its digest and the
evaluation's counts leave).
The training rows' guarantee is unchanged: their releases are the same. The evaluation is on fewer
rows (1 − s of the held-out set), never on a row the top was fitted on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from federated.vertical import Top

_DOMAIN = b"xgate-top-calibration-v1\x00"
# Each part needs both outcomes this often, or the label holder keeps the de-attenuated top: a
# logistic fit on a handful of positives is noise, and an AUC needs both classes.
MIN_PER_CLASS = 20
NEWTON_STEPS = 25


def calibration_rows(pseudonyms: Sequence[str], share: float, seed: int) -> np.ndarray:
    """True for the held-out rows the top is fitted on: SHA-256 of (seed, pseudonym) below `share`."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"a calibration share is within (0, 1), not {share}")
    limit = share * 2.0**64
    key = _DOMAIN + str(seed).encode() + b"\x00"
    return np.array(
        [int.from_bytes(hashlib.sha256(key + p.encode()).digest()[:8], "big") < limit for p in pseudonyms],
        dtype=bool,
    )


def enough(y: np.ndarray, calibration: np.ndarray) -> bool:
    """Whether both parts hold at least MIN_PER_CLASS rows of each outcome."""
    y = np.asarray(y) > 0.5
    return all(
        int(part.sum()) >= MIN_PER_CLASS and int((~part).sum()) >= MIN_PER_CLASS
        for part in (y[calibration], y[~calibration])
    )


def calibrated_top(e: np.ndarray, y: np.ndarray, l2: float, h: int) -> np.ndarray:
    """Top weights (K·h + 1, bias last) fitted on the calibration rows' clean embeddings."""
    if len(e) != len(y) or e.ndim != 2:
        raise ValueError(f"{len(y)} labels for embeddings of shape {e.shape}")
    if not np.isfinite(e).all():
        raise ValueError("calibration embeddings hold a value that is not a finite number")
    top = Top.init(e.shape[1])
    top.step(e, np.asarray(y, dtype=np.float64), l2, h, newton_steps=NEWTON_STEPS)
    return top.w
