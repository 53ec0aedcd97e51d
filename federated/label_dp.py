"""Label differential privacy for vertical jobs (pure): randomized response on the training labels.

In split learning the label holder sends each feature node dL/dE for every aligned training row;
for logistic regression that is (p - y) t_k / |t_k|^2, whose sign gives the row's label away
(tests/attacks/test_label_inference.py measures it). With `label_dp = epsilon` the label holder
replaces each training label once, before training, by randomized response (Warner 1965): kept with
probability e^eps / (1 + e^eps), flipped otherwise, and trains its bottom and top models on these
labels only. Everything it then sends (gradients, losses) is post-processing of the noisy labels
and the embeddings, so each training label is epsilon-label-DP (Ghazi et al. 2021) against the
feature nodes and the coordinator, over the whole job: one release per label, no composition.
Consequence for an attacker who sees everything sent: with a uniform prior on a label, no
inference rule guesses it right with probability above e^eps / (1 + e^eps) (`attack_bound`).
Evaluation uses the true held-out labels, which never enter training; only aggregate metrics
leave.

The flips repeat. A fresh draw per run would let a coordinator (or an analyst resubmitting) run
the job k times and take each label's majority: that converges on the true label. So each flip is
decided by a word the label holder draws with its own secret key over (label element, ε, subject)
(crypto/keyed_draws.py, never the job's public seed): every run and every job on the same labels
at the same ε trains on the same noisy labels, one release however often it is used. A job at
another ε is another release; the label holder's ledger charges each (element, ε) release once
against the label dataset's cap (federated/admission.py).
"""

from __future__ import annotations

import math

import numpy as np


def flip_probability(epsilon: float) -> float:
    return 1.0 / (1.0 + math.exp(epsilon))


def attack_bound(epsilon: float) -> float:
    """Largest probability of guessing a uniformly distributed binary label under epsilon-label-DP."""
    return math.exp(epsilon) / (1.0 + math.exp(epsilon))


def randomized_response(y: np.ndarray, epsilon: float, words: np.ndarray) -> np.ndarray:
    """Each 0/1 label flipped with probability 1 / (1 + e^epsilon), decided by its own uniform
    64-bit word (one per label, drawn independently of the labels)."""
    if len(words) != len(y):
        raise ValueError(f"{len(words)} draws for {len(y)} labels")
    uniform = (np.asarray(words, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    flip = uniform < flip_probability(epsilon)
    return np.where(flip, 1.0 - y, y).astype(np.float64)


def release_domain(label: str, epsilon: float) -> str:
    """What names one release of a label element's noisy labels: the element and the ε (exactly)."""
    return f"label-dp\x00{label}\x00{epsilon!r}"
