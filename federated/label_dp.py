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
leave. Flip noise comes from OS entropy, never from the job's public seed.
"""

from __future__ import annotations

import math

import numpy as np


def flip_probability(epsilon: float) -> float:
    return 1.0 / (1.0 + math.exp(epsilon))


def attack_bound(epsilon: float) -> float:
    """Largest probability of guessing a uniformly distributed binary label under epsilon-label-DP."""
    return math.exp(epsilon) / (1.0 + math.exp(epsilon))


def randomized_response(y: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Each 0/1 label flipped independently with probability 1 / (1 + e^epsilon)."""
    flip = rng.random(len(y)) < flip_probability(epsilon)
    return np.where(flip, 1.0 - y, y).astype(np.float64)
