"""Job outputs: model metadata JSON, evaluation report JSON and the training-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def write_outputs(job_dir: Path, metadata: dict[str, Any], summary: dict[str, Any]) -> dict[str, Path]:
    paths = {"metadata": job_dir / "model.json", "report": job_dir / "report.json", "curve": job_dir / "curve.png"}
    paths["metadata"].write_text(json.dumps(metadata, indent=1, sort_keys=True, default=str))
    report = {
        "job_id": metadata["job_id"],
        "evaluation": summary.get("evaluation", {}),
        "curve": summary.get("curve", []),
        "dp": summary.get("dp"),
    }
    paths["report"].write_text(json.dumps(report, indent=1, sort_keys=True, default=float))
    plot_curve(summary.get("curve", []), paths["curve"], title=str(metadata["job_id"]))
    return paths


def plot_curve(curve: list[dict[str, Any]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rounds = [int(r["round"]) for r in curve]
    ax.plot(rounds, [float(r["loss"]) for r in curve], marker="o", label="loss")
    ax.set_xlabel("round")
    ax.set_ylabel("loss (binary cross-entropy)")
    aucs = [(int(r["round"]), float(r["auc"])) for r in curve if "auc" in r]
    if aucs:
        ax2 = ax.twinx()
        ax2.plot([a for a, _ in aucs], [b for _, b in aucs], marker="s", color="tab:orange", label="AUC")
        ax2.set_ylabel("held-out AUC")
        ax2.set_ylim(0.5, 1.0)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
