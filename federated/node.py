"""What a ClientApp knows about its own node: store, agency, ledger and evaluation split.

All of it comes from the SuperNode's `--node-config` (set by the agency's administrator, never
by the job): store='<sqlite path>' agency='<name>' ledger='<sqlite path>' [holdout='<file>']
[policy_dir='<dir>'] [policy_ca='<pem>'] [identity_key='<openssh key>' identity_cert='<pem>']
[ca_cert='<pem>' [crl='<pem>']] (built by `node_config_arg`). The identity is the SuperNode's own
CA-certified key, with which the node signs its PSI agreement key; with the CA certificate it
checks its peers' (federated/psi_keys.py).
`holdout` names a node-local file of pseudonyms reserved for evaluation; without it a keyed
hash of the pseudonym reserves ~20 % (the same rule at every node, so vertical splits agree).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from federated import datasets, model, pooled_stats
from federated.jobs import Encoding, JobSpec
from xgate.errors import ConfigError, InvalidInput
from xgate.logging import get_logger

log = get_logger(__name__)

HOLDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class NodeConfig:
    store: Path
    agency: str
    ledger: Path
    holdout: Path | None
    policy_dir: Path | None = None  # set: this node decides admission itself (Cedar + ε ledger)
    policy_ca: Path | None = None  # set: policy_dir must hold a bundle signed by this CA (signed_policies)
    identity_key: Path | None = None  # the SuperNode's OpenSSH key: signs this node's PSI agreement keys
    identity_cert: Path | None = None  # its `flower-supernode` certificate
    ca_cert: Path | None = None  # set: every peer's PSI agreement key must verify against this CA
    crl: Path | None = None  # checked with ca_cert


def node_config(cfg: Mapping[str, object]) -> NodeConfig:
    try:
        store, agency, ledger = Path(str(cfg["store"])), str(cfg["agency"]), Path(str(cfg["ledger"]))
    except KeyError as exc:
        raise ConfigError(f"SuperNode node-config lacks '{exc.args[0]}'") from None
    paths = {
        name: Path(str(cfg[name])) if cfg.get(name) else None
        for name in ("holdout", "policy_dir", "policy_ca", "identity_key", "identity_cert", "ca_cert", "crl")
    }
    if (paths["identity_key"] is None) != (paths["identity_cert"] is None):
        raise ConfigError("SuperNode node-config needs both identity_key and identity_cert, or neither")
    if paths["ca_cert"] is None and (paths["identity_key"] is not None or paths["crl"] is not None):
        # signing without checking peers, or a CRL nothing is checked against: a misconfiguration
        raise ConfigError("SuperNode node-config sets identity_key or crl without ca_cert")
    return NodeConfig(store, agency, ledger, **paths)


def node_config_arg(nc: NodeConfig) -> str:
    """`flower-supernode --node-config` for this node: what `node_config` reads back in the ClientApp.

    Values are TOML literal strings (Flower parses `key='value'` pairs as TOML), so a path may hold
    spaces but no single quote or control character; such a path is refused, never mangled.
    """
    pairs: list[tuple[str, str | Path | None]] = [
        ("store", nc.store),
        ("agency", nc.agency),
        ("ledger", nc.ledger),
        ("holdout", nc.holdout),
        ("policy_dir", nc.policy_dir),
        ("policy_ca", nc.policy_ca),
        ("identity_key", nc.identity_key),
        ("identity_cert", nc.identity_cert),
        ("ca_cert", nc.ca_cert),
        ("crl", nc.crl),
    ]
    parts = []
    for name, value in pairs:
        if value is None:
            continue
        text = str(value.resolve()) if isinstance(value, Path) else value
        if "'" in text or any(ord(c) < 32 or ord(c) == 127 for c in text):  # TOML literal string rules
            raise ConfigError(f"SuperNode node-config '{name}' must not contain quotes or control characters")
        parts.append(f"{name}='{text}'")
    return " ".join(parts)


def check_label(info: datasets.ElementInfo) -> None:
    """A training label is a flag: 0 or 1 (a flag, or an int or category with exactly those two
    values). Anything wider would be read as `> 0` and train on a label nobody asked for."""
    if (info.min, info.max) != (0, 1):
        raise InvalidInput(
            f"the label '{info.id}' is a {info.type} of {info.min}..{info.max}; a training label must be "
            "a flag (0 or 1): choose a flag element, or add one derived from it to the dataset"
        )


def split_problem(test: np.ndarray, holdout: Path | None) -> str | None:
    """Why a train/test split has nothing on one side (None if both have rows), logged locally with
    the counts and the holdout file's path: an empty held-out set evaluates to NaN, and no training
    rows train nothing."""
    if test.any() and not test.all():
        return None
    side = "none" if not test.any() else "all"
    log.warning("split_one_sided", holds_out=side, subjects=len(test), holdout_file=str(holdout) if holdout else None)
    return side


def check_split(test: np.ndarray, holdout: Path | None) -> None:
    """Refuse a train/test split with nothing on one side. The refusal reaches the coordinator, so it
    names neither the node's subject count nor the holdout file's path (both are in the node's own
    log, `split_one_sided`)."""
    side = split_problem(test, holdout)
    if side is None:
        return
    source = "the node's holdout file" if holdout is not None else "the job's holdout rule"
    hint = " (a holdout file lists pseudonyms, one per line, as `xgate train split` writes them)"
    if side == "none":
        raise InvalidInput(f"{source} holds out none of the node's subjects{hint if holdout else ''}")
    raise InvalidInput(f"{source} holds out all of the node's subjects: none is left to train on")


def is_holdout(subjects: Sequence[str], job: JobSpec, holdout: Path | None) -> np.ndarray:
    if holdout is not None:
        reserved = set(holdout.read_text(encoding="utf-8").split())
        return np.fromiter((s in reserved for s in subjects), dtype=bool, count=len(subjects))
    salt = f"xgate-holdout-{job.seed}:".encode()
    return np.fromiter(
        (hashlib.sha256(salt + s.encode()).digest()[0] < 256 * HOLDOUT_FRACTION for s in subjects),
        dtype=bool,
        count=len(subjects),
    )


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class LabelledRows:
    """This node's subjects that have a label, before encoding (NaN = missing)."""

    infos: list[datasets.ElementInfo]  # the job's features
    encodings: list[Encoding]
    raw: np.ndarray  # rows x features
    y: np.ndarray
    test: np.ndarray  # True for the held-out rows

    def encoded(self, stats: model.Stats | None = None, *, bound: float | None = None) -> Split:
        """Encoded features and labels, split into training and held-out rows; `bound`: every encoded
        value clipped to [-bound, bound] (a no-op for declared-range encodings, which lie in [0, 1])."""
        x = model.encode(self.infos, self.raw, self.encodings, stats)
        if bound is not None:
            x = np.clip(x, -bound, bound)
        return Split(x[~self.test], self.y[~self.test], x[self.test], self.y[self.test])

    def train_moments(self) -> np.ndarray:
        """The moment vector of the training rows, for pooled standardisation (pooled_stats)."""
        return pooled_stats.moments(self.infos, self.encodings, self.raw[~self.test])


def labelled_rows(job: JobSpec, nc: NodeConfig) -> LabelledRows:
    elements = [*job.features, job.label]
    infos = datasets.element_info(nc.store, elements)
    check_label(infos[-1])
    subjects, raw = datasets.read_matrix(nc.store, elements)
    has_label = ~np.isnan(raw[:, -1])
    subjects = [s for s, keep in zip(subjects, has_label, strict=True) if keep]
    raw = raw[has_label]
    features = infos[:-1]
    test = is_holdout(subjects, job, nc.holdout)
    if nc.holdout is not None and job.dp is None:  # the hash rule may leave a small node's held-out set empty
        check_split(test, nc.holdout)
    elif nc.holdout is not None:
        # A DP job trains (noise alone, from the released count) and evaluates whatever the split:
        # a refusal would tell the coordinator whether the one record on that side is present.
        split_problem(test, nc.holdout)
    return LabelledRows(
        features, model.resolve(features, job.encodings), raw[:, :-1], (raw[:, -1] > 0).astype(np.float64), test
    )


def horizontal_data(job: JobSpec, nc: NodeConfig, stats: model.Stats | None = None) -> Split:
    """Encoded features and labels of this node's subjects that have a label.

    Every encoding uses declared metadata only but `standardise`, whose pooled statistics the
    coordinator sends (`stats`, from the job's statistics round: pooled_stats).
    """
    return labelled_rows(job, nc).encoded(stats)


def held_features(job: JobSpec, nc: NodeConfig) -> list[str]:
    held = set(datasets.held_elements(nc.store))
    return [f for f in job.features if f in held]


# -- score histograms for federated evaluation ---------------------------------------------------

HIST_BINS = 2400
LOGIT_RANGE = 12.0


def score_histograms(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label counts of scores in equal bins of the logit over [-12, 12] (monotone in the score)."""
    with np.errstate(all="ignore"):
        p = np.clip(np.nan_to_num(scores, nan=0.5), 1e-12, 1 - 1e-12)  # a NaN score lands mid-range
        logit = np.clip(np.log(p / (1 - p)), -LOGIT_RANGE, LOGIT_RANGE - 1e-9)
    idx = ((logit + LOGIT_RANGE) / (2 * LOGIT_RANGE) * HIST_BINS).astype(np.int64)
    pos = np.bincount(idx[y > 0], minlength=HIST_BINS)
    neg = np.bincount(idx[y <= 0], minlength=HIST_BINS)
    return pos, neg


def histogram_loss(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mean log loss estimated from per-label histograms, each bin scored at its centre logit (what
    the coordinator reports for a record-DP job, whose nodes keep their exact loss)."""
    bins = len(pos)
    centre = -LOGIT_RANGE + (np.arange(bins) + 0.5) * (2 * LOGIT_RANGE / bins)
    total = float(np.sum(pos) + np.sum(neg))
    if total <= 0:
        return float("nan")
    loss = (np.dot(pos, np.logaddexp(0.0, -centre)) + np.dot(neg, np.logaddexp(0.0, centre))) / total
    return max(0.0, float(loss))  # noisy (negative) counts can pull the estimate below any real loss


def histogram_report(pos: np.ndarray, neg: np.ndarray, threshold: float) -> dict[str, object]:
    """AUC, balanced accuracy and confusion matrix from summed histograms (threshold on the score).

    The bins are the histograms' own (HIST_BINS exact, fewer and noisy from record-DP nodes,
    federated/holdout_dp.py): noisy counts may be negative, so the four totals are clipped at zero."""
    bins = len(pos)
    t = np.clip(threshold, 1e-12, 1 - 1e-12)
    cut = min(bins, max(0, int((np.log(t / (1 - t)) + LOGIT_RANGE) / (2 * LOGIT_RANGE) * bins)))
    tp, fn = max(0, int(pos[cut:].sum())), max(0, int(pos[:cut].sum()))
    fp, tn = max(0, int(neg[cut:].sum())), max(0, int(neg[:cut].sum()))
    auc = model.auc_from_histograms(pos, neg)  # noisy counts: can leave [0, 1], clamped (post-processing)
    return {"auc": auc if np.isnan(auc) else min(1.0, max(0.0, auc)), **model.counts_report(tp, fp, tn, fn)}
