"""How the vertical job's default batch was chosen: in-process replays of the plain (non-DP) job.

    python -m bench.vertical_batches [--limit N]

Replays split learning as the ClientApps run it (federated/vertical.py's bottoms and top, the job's
batch schedule, pipelined: feature nodes embed batch t while the label holder works on t-1, so the
embeddings are one update stale; embeddings and gradients through `to_half`/`from_half`, the wire
format), over one node per agency of Census-Income, for full batches and for mini-batches of
`federated.jobs.VERTICAL_BATCH` rows at several step counts. Trains on the training rows less a
validation split (bench/dp_sweep.py's, 20 % by a keyed hash) and reports the validation AUC (what a
choice may rest on), the test AUC, and the embedding rows each feature node sends (the gradients
coming back are as many), at the full data and at the 100,000-row subsample the record-DP
benchmark uses. Without Flower, so no wall time or bytes: the
Flower runs in bench/federated.py measure those. Writes bench/results/vertical_batches.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import dp_sweep
from federated import census, model
from federated.jobs import VERTICAL_BATCH
from federated.vertical import RIDGE, Bottom, Top, batch_indices, from_half, preconditioner, to_half

RESULTS = Path(__file__).parent / "results" / "vertical_batches.json"
SETTINGS = (
    (0, 6),
    (0, 10),
    (VERTICAL_BATCH, 6),
    (VERTICAL_BATCH, 8),
    (VERTICAL_BATCH, 10),
    (VERTICAL_BATCH, 12),
)  # 0: full batches
LEARNING_RATE = 3.0  # the benchmark job's
L2 = 1e-4


def _wire(a: np.ndarray) -> np.ndarray:
    return from_half(to_half(a))


def replay(rows: dict[str, np.ndarray], y: np.ndarray, held: list[tuple[dict[str, np.ndarray], np.ndarray]], *,
           batch: int, rounds: int, h: int = 4, seed: int = 0) -> list[float]:  # fmt: skip
    """AUC on each held-out set of the pipelined job (vertical_server.run_vertical's schedule) after
    `rounds` steps."""
    n, label = len(y), census.LABEL_HOLDER
    feats = [a for a in rows if a != label]
    bottoms = {a: Bottom.init(x.shape[1], h, seed, a) for a, x in rows.items()}
    pre = {a: preconditioner(x, RIDGE) for a, x in rows.items()}
    top = Top.init((1 + len(feats)) * h)
    embs: dict[int, dict[str, np.ndarray]] = {}
    grads: dict[int, dict[str, np.ndarray]] = {}

    def apply(step: int) -> None:
        """The feature nodes' update with the gradient of batch `step`."""
        idx, due = batch_indices(n, batch, step, seed), grads.pop(step)
        for a in feats:
            bottoms[a].backward(rows[a][idx], due[a], LEARNING_RATE, pre[a])

    for i in range(rounds + 1):
        if i < rounds:
            if i - 2 in grads:
                apply(i - 2)
            idx = batch_indices(n, batch, i, seed)
            embs[i] = {a: _wire(bottoms[a].forward(rows[a][idx])) for a in feats}
        if i >= 1:
            idx = batch_indices(n, batch, i - 1, seed)
            got = embs.pop(i - 1)
            e = np.hstack([bottoms[label].forward(rows[label][idx]), *(got[a] for a in feats)])
            _, g = top.step(e, y[idx], L2, h)
            bottoms[label].backward(rows[label][idx], g[:, :h], LEARNING_RATE, pre[label])
            grads[i - 1] = {a: _wire(g[:, (k + 1) * h : (k + 2) * h]) for k, a in enumerate(feats)}
    for step in sorted(grads):  # the last call applies what is still due
        apply(step)
    out = []
    for x, y_held in held:
        scores = top.scores(np.hstack([bottoms[a].forward(x[a]) for a in (label, *feats)]))
        out.append(float(model.report(scores, y_held, threshold=float(y.mean()))["auc"]))
    return out


def measure(limit: int | None) -> dict[str, Any]:
    s = dp_sweep.vertical_split(census.load(limit=limit))
    rows, y = s.train, s.y_train
    n = len(y)
    out: dict[str, Any] = {"rows": limit or "all", "training_rows": n, "runs": []}
    for batch, rounds in SETTINGS:
        size = batch or n
        per_epoch = -(-n // size)
        sent = sum(len(batch_indices(n, size, t, 0)) for t in range(rounds))
        t0 = time.perf_counter()
        validation, test = replay(rows, y, [(s.validation, s.y_validation), (s.test, s.y_test)], batch=size,
                                  rounds=rounds)  # fmt: skip
        out["runs"].append(
            {"batch_size": size, "batches_per_epoch": per_epoch, "rounds": rounds, "validation_auc": validation,
             "test_auc": test, "embedding_rows_sent_per_node": sent, "replay_s": round(time.perf_counter() - t0, 1)}
        )  # fmt: skip
        print(json.dumps(out["runs"][-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=100_000, help="also replay a seeded subsample of N rows")
    ap.add_argument("--quick", action="store_true", help="a 30,000-row subsample only (vertical_batches-quick.json)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.quick:
        result: dict[str, Any] = {"subsample": measure(30_000), "default_batch": VERTICAL_BATCH}
        target = RESULTS.with_name("vertical_batches-quick.json")
    else:
        result = {"full": measure(None), "subsample": measure(args.limit), "default_batch": VERTICAL_BATCH}
        target = RESULTS
    result["wall_s"] = time.perf_counter() - t0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1))
    print(f"-> {target}")


if __name__ == "__main__":
    main()
