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
The held-out labels are released the same way: the evaluation counts and scores the held-out
rows against their randomized-response labels (the same keyed flips, so a subject's noisy label is
one whatever split it falls in) and reports unbiased estimates of the true figures
(`debiased_counts`, `debiased_auc`). Evaluated against the true labels, one evaluation per job
would let a coordinator choose the held-out embeddings so that the counts give one label away,
and a resubmitted job (another id or seed, another holdout) another: label DP would hold for the
training labels only.

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


def true_rate(observed: float, epsilon: float) -> float:
    """Unbiased estimate of the share of positive labels from their share after randomized
    response (E[observed] = rate(1 - p) + (1 - rate) p), clipped to [0, 1]."""
    p = flip_probability(epsilon)
    return min(1.0, max(0.0, (observed - p) / (1.0 - 2.0 * p)))


def debiased_counts(predicted: np.ndarray, noisy: np.ndarray, epsilon: float) -> tuple[int, int, int, int]:
    """(tp, fp, tn, fn) estimated from randomized-response labels: within each predicted group the
    true positives are estimated from the noisy positives as in `true_rate` (rounded, within the group)."""
    p = flip_probability(epsilon)
    predicted = np.asarray(predicted, dtype=bool)
    noisy = np.asarray(noisy, dtype=np.float64)

    def positives(group: np.ndarray) -> tuple[int, int]:
        n = int(group.sum())
        estimate = (float(noisy[group].sum()) - n * p) / (1.0 - 2.0 * p)
        return min(n, max(0, round(estimate))), n

    tp, n_predicted = positives(predicted)
    fn, n_rest = positives(~predicted)
    return tp, n_predicted - tp, n_rest - fn, fn


def debiased_auc(observed_auc: float, observed_rate: float, epsilon: float) -> float:
    """The AUC against the true labels, estimated from the AUC against randomized-response labels.

    With true prevalence pi, an observed positive is a true positive with probability
    w1 = pi(1-p) / (pi(1-p) + (1-pi)p) and an observed negative with w0 = pi p / (pi p + (1-pi)(1-p)),
    so AUC_obs = 1/2 (w1 w0 + (1-w1)(1-w0)) + (1-w1) w0 + (w1 - w0) AUC: solved for AUC, clipped to
    [0, 1]; NaN when the estimated prevalence leaves no positives or no negatives.
    """
    p = flip_probability(epsilon)
    pi = true_rate(observed_rate, epsilon)
    positive_is_true = pi * (1 - p) / max(pi * (1 - p) + (1 - pi) * p, 1e-300)
    negative_is_positive = pi * p / max(pi * p + (1 - pi) * (1 - p), 1e-300)
    spread = positive_is_true - negative_is_positive
    if spread <= 1e-9:
        return float("nan")
    base = 0.5 * (positive_is_true * negative_is_positive + (1 - positive_is_true) * (1 - negative_is_positive))
    base += (1 - positive_is_true) * negative_is_positive
    return min(1.0, max(0.0, (observed_auc - base) / spread))
