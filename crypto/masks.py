"""Per-subject masks for the sign-only comparison (pure, no I/O).

The gateway turns a criterion's difference d into v = r*d + s' with 1 <= r < r_max and
0 <= s' < r, so the requester learns sign(v) = sign(d) exactly, and as little as a linear mask
allows about |d|:

* **Keyed to the question, not the program.** r and s' come from a keyed PRF (BLAKE2b with the
  gateway's mask key, RFC 7693) over (question, epoch, pseudonym, and the nodes' tags of the values
  compared: crypto/value_tags.py, so a changed value is masked afresh), where the question is what is
  compared: the terms with their defaults, the direction and the threshold (see
  `policies.programs.Criterion.question`). Two programs asking the same question in the same epoch
  give the same v, so neither a repeat nor a second program yields a fresh sample (except in the
  overall view, where exchange/eligibility.py keys the program in too: there equal values would
  let the requester pair up shared criteria and name the failing one).
* **Range fitted to the criterion.** r < r_max(D) = floor((t/2 - 1) / (D + 1)) where D bounds
  |d| over the declared element ranges, so |v| < t/2 never wraps; registers (D = 1) get up to
  2^MAX_MASK_LOG2, a 2.3-million-CNY income sum about 2^35.8. Every criterion's |v| then reaches
  the same order of magnitude, so in the overall (silver) view a large |v| no longer singles out
  the income criterion.
* **Shape: no exact reveals.** With s' < r, a value |v| below the smallest possible r is
  consistent with one difference only (v in [0, r_min) means d = 0; v in [-r_min, 0) means d = -1),
  whatever r_min is, so a hard lower bound alone does not help (raising it rescales v and the
  exclusive region alike): what counts is how much of r's distribution lies near its bottom,
  P(exact) = E[r_min / r]. The lower bound is therefore a soft one: log2 r is drawn on [0, hi] with
  a density rising as x^RAMP_POWER over the lower RAMP_FRACTION of the range and flat above it, so
  the bottom carries almost no mass (0 exact and 0 near-exact reveals in 10^6 subjects at the
  thresholds, bench/privacy.py) while the flat top still spreads log2|v| over ~13 bits. A flat
  log-uniform r (the earlier design) leaks less about |d| (0.51 against ~1.0 bits) but pinned d
  exactly for ~2 % of subjects at the threshold; docs/PROTOCOL.md states the floor and why 0.1
  bits is out of reach for a linear mask.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from crypto.he import MAX_ABS_DIFFERENCE, PLAIN_MODULUS

MASK_KEY_BYTES = 32
_DOMAIN = b"xgate-mask/2"
MIN_MASK_LOG2 = 0  # r >= 1: a harder floor only rescales the problem (see above); the ramp is the bound
# s' = (64 random bits) mod r is biased by at most r / 2^64 <= 2^-16 below this cap.
MAX_MASK_LOG2 = 48
RAMP_FRACTION = 0.6
RAMP_POWER = 14
_HALF_T = PLAIN_MODULUS // 2


def mask_bound(max_abs_difference: int) -> int:
    """The exclusive upper bound on r for a criterion with |d| <= max_abs_difference (no wrap)."""
    if not 1 <= max_abs_difference <= MAX_ABS_DIFFERENCE:
        raise ValueError(f"max |d| must be within 1..{MAX_ABS_DIFFERENCE}")
    # |v| <= r*(D+1) - 1 < t/2 for r < r_max.
    return min(1 << MAX_MASK_LOG2, (_HALF_T - 1) // (max_abs_difference + 1))


def mask_log2_range(max_abs_difference: int) -> tuple[float, float]:
    return float(MIN_MASK_LOG2), math.log2(mask_bound(max_abs_difference))


def ramp_quantile(u: np.ndarray) -> np.ndarray:
    """Inverse CDF on [0, 1] of the density proportional to min(1, x / RAMP_FRACTION)^RAMP_POWER."""
    rho, k = RAMP_FRACTION, RAMP_POWER
    ramp_mass = rho / (k + 1)
    total = ramp_mass + (1 - rho)
    z = np.asarray(u, dtype=np.float64) * total
    low = rho * np.power(np.clip(z / ramp_mass, 0.0, 1.0), 1.0 / (k + 1))
    return np.where(z < ramp_mass, low, rho + (z - ramp_mass))


def masks_from_words(words: np.ndarray, max_abs_difference: int) -> tuple[np.ndarray, np.ndarray]:
    """(r, s') from two uniform 64-bit words per subject (rows); shared by the PRF and the benchmarks."""
    lo, hi = mask_log2_range(max_abs_difference)
    bound = mask_bound(max_abs_difference)
    # u in [0, 1) from the top 53 bits (exactly representable as float64).
    u = (words[:, 0] >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    r = np.floor(np.exp2(lo + (hi - lo) * ramp_quantile(u))).astype(np.int64)
    r = np.clip(r, 1 << MIN_MASK_LOG2, bound - 1)
    s = (words[:, 1] % r.astype(np.uint64)).astype(np.int64)
    return r, s


def _prf_words(
    key: bytes, parts: Sequence[bytes], pseudonyms: Sequence[str], pairs: int = 1, data: Sequence[bytes] | None = None
) -> np.ndarray:
    """`pairs` pairs of uniform 64-bit words per pseudonym (shape: pseudonyms x pairs x 2), one
    BLAKE2b call each, keyed with the mask key over the domain, the label parts, the pseudonym and,
    where given, that subject's `data` (the value tags of what is compared, crypto/value_tags.py)."""
    if len(key) != MASK_KEY_BYTES:
        raise ValueError(f"mask key must be {MASK_KEY_BYTES} bytes")
    if data is not None and len(data) != len(pseudonyms):
        raise ValueError("one data tag per pseudonym")
    prefix = b"\x00".join((_DOMAIN, *parts, b""))
    raw = bytearray()
    for j, pseudonym in enumerate(pseudonyms):
        # A pseudonym never holds NUL; the data after it is what the subject's values are now.
        tail = b"\x00" + data[j] if data is not None else b""
        raw += hashlib.blake2b(prefix + pseudonym.encode() + tail, key=key, digest_size=16 * pairs).digest()
    return np.frombuffer(bytes(raw), dtype="<u8").reshape(-1, pairs, 2) if raw else np.zeros((0, pairs, 2), np.uint64)


def derive_masks(
    key: bytes,
    question: str,
    epoch: int,
    pseudonyms: Sequence[str],
    max_abs_difference: int = MAX_ABS_DIFFERENCE,
    data: Sequence[bytes] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (r, s') as int64 arrays, one entry per pseudonym, in the given order. `data`: per
    subject, the value tags of the values compared (crypto/value_tags.py): the same values give the
    same masks, changed values fresh ones (else v1 - v2 = r * (d1 - d2) would give r away)."""
    parts = (question.encode(), str(max_abs_difference).encode(), str(epoch).encode())
    return masks_from_words(_prf_words(key, parts, pseudonyms, data=data)[:, 0], max_abs_difference)


# Share of a sign-only criterion's failing magnitudes drawn as a sum failing further than one
# unit past its line (a sum of several clamped terms can): without it, any failing |v| beyond what
# a sign-only criterion could show named the sum with certainty (1.5 % of 低保 income failures).
# Identification by magnitudes measured unchanged at 2-10 % (bench/privacy.py).
FAR_FAIL_SHARE = 1 / 16


def derive_sign_masks(
    key: bytes,
    question: str,
    epoch: int,
    pseudonyms: Sequence[str],
    like_span: int,
    like_passing_reach: int,
    like_failing_reach: int = 1,
    data: Sequence[bytes] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(r, s') for a criterion whose clamped difference is 0 (pass) or -1 (fail), shaped so that
    its masked value looks like a sum's (`like_span`; passing d up to `like_passing_reach`,
    failing d down to -`like_failing_reach`).

    With d in {0, -1}, v = r*d + s' is s' on a pass and s' - r on a fail, so the two magnitudes
    can be drawn apart: a pass shows beta = r_b*U + s_b, as the sum shows a pass at a difference U
    drawn uniformly from 0..reach (the gateway knows the reach, not the population); a fail shows
    gamma = r_g*V - s_g, as the sum shows a fail V units past its threshold: V = 1, where its
    nodes' clamps put failing sums of one term, except for a share `FAR_FAIL_SHARE` log-uniform up
    to the failing reach. (r_b, s_b) and (r_g, s_g) are the sum's own mask distribution, keyed
    apart. So in the overall view a position's |v| no longer tells a sign-only criterion from the
    sum (docs/PROTOCOL.md "Masks"). No wrap: beta < r_max(like_span) * (reach + 1) <= t/2 and
    gamma <= r_max(like_span) * failing reach < t/2 for reaches within the span; r = beta + gamma < t.
    """
    if not 0 <= like_passing_reach <= like_span:
        raise ValueError("a sum's passing reach lies within its span")
    if not 1 <= like_failing_reach <= like_span:
        raise ValueError("a sum's failing reach lies within 1..its span")
    parts = (question.encode(), b"sign-only", str(like_span).encode(), str(epoch).encode())
    words = _prf_words(key, parts, pseudonyms, pairs=2, data=data)  # fresh when the values change, as derive_masks
    r_b, s_b = masks_from_words(words[:, 0], like_span)  # the pass
    r_g, s_g = masks_from_words(words[:, 1], like_span)  # the fail
    # The distances it pretends (U, V) are the subject's own in every epoch, as a sum's real distance
    # is while the values stand: drawn afresh each epoch, their spread over a year of results told a
    # sign-only criterion from the sum (bench/privacy.py `over_epochs`). Only r and s change.
    distance = _prf_words(key, (question.encode(), b"sign-only-distance", str(like_span).encode()), pseudonyms, 2)
    # (64 random bits) mod (reach + 1): biased by at most (reach + 1) / 2^64.
    reach = (distance[:, 0, 0] % np.uint64(like_passing_reach + 1)).astype(np.int64)
    far = (distance[:, 1, 0] >> np.uint64(11)).astype(np.float64) / float(1 << 53) < FAR_FAIL_SHARE
    position = (distance[:, 1, 1] >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    past = np.floor(np.exp2(1 + position * max(0.0, math.log2(like_failing_reach) - 1))).astype(np.int64)
    past = np.where(far & (like_failing_reach >= 2), np.clip(past, 2, like_failing_reach), 1)
    beta = r_b * reach + s_b
    gamma = r_g * past - s_g
    return beta + gamma, beta


def epoch_of(unix_seconds: float, epoch_seconds: int) -> int:
    """The masking epoch a moment falls in (epochs are fixed per program)."""
    if epoch_seconds <= 0:
        raise ValueError("epoch length must be positive")
    return int(unix_seconds // epoch_seconds)


def derive_permutations(
    key: bytes, program: str, epoch: int, pseudonyms: Sequence[str], k: int, data: Sequence[bytes] | None = None
) -> np.ndarray:
    """One permutation of range(k) per subject (rows), keyed like the masks so repeats agree; with
    `data` (the subject's value tags) a changed value draws a fresh order too: kept, the position
    whose value moved with a change the requester knows of would name its criterion."""
    if len(key) != MASK_KEY_BYTES:
        raise ValueError(f"mask key must be {MASK_KEY_BYTES} bytes")
    if data is not None and len(data) != len(pseudonyms):
        raise ValueError("one data tag per pseudonym")
    prefix = b"\x00".join((_DOMAIN, b"criteria-order", program.encode(), str(epoch).encode(), b""))
    rows = np.empty((len(pseudonyms), k), dtype=np.int64)
    for j, pseudonym in enumerate(pseudonyms):
        tail = b"\x00" + data[j] if data is not None else b""
        digest = hashlib.blake2b(prefix + pseudonym.encode() + tail, key=key, digest_size=8 * k).digest()
        rows[j] = np.argsort(np.frombuffer(digest, dtype="<u8"), kind="stable")
    return rows
