"""The Training page's data: job directories written by federated.runner, and the privacy ledger.

A job directory holds status.json (state), events.jsonl (audit events: rounds, dp_spent, ...),
report.json (evaluation and the training curve) and model.json (job spec, decisions, ε). The
files are read as they are; a job still running simply has fewer of them.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.training_jobs import requester_agency
from policies.budgets import PrivacyLedger
from policies.loader import DatasetsFile
from xgate.errors import ConfigError, NotFound, StoreUnavailable
from xgate.tomlfile import load_model

JOB_ID = re.compile(r"^[a-z0-9][a-z0-9_\-]{2,63}$")
MAX_JOBS = 200
MAX_EVENTS = 2000
_SPEC_KEYS = ("purpose", "mode", "features", "label", "label_holder", "rounds", "secagg", "dp", "min_nodes")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _events(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if len(out) >= MAX_EVENTS:
                    break
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if isinstance(ev, dict):
                    out.append(ev)
    except OSError:
        pass
    return out


def _curve(report: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(report, dict) and isinstance(report.get("curve"), list) and report["curve"]:
        return [p for p in report["curve"] if isinstance(p, dict) and "round" in p]
    points: dict[int, dict[str, Any]] = {}
    for ev in events:  # a running job: build the curve from round events
        if ev.get("event") in ("round_completed", "round_evaluated") and "round" in ev:
            p = points.setdefault(int(ev["round"]), {"round": int(ev["round"])})
            for key in ("loss", "auc"):
                if isinstance(ev.get(key), int | float):
                    p[key] = ev[key]
    return [points[r] for r in sorted(points) if len(points[r]) > 1]


def job_summary(job_dir: Path) -> dict[str, Any]:
    status = _json(job_dir / "status.json") or {}
    model = _json(job_dir / "model.json") or {}
    report = _json(job_dir / "report.json")
    events = _events(job_dir / "events.jsonl")
    spec: dict[str, Any] = model["job"] if isinstance(model.get("job"), dict) else {}
    for ev in events:
        if ev.get("event") == "job_submitted":
            spec = {"purpose": ev.get("purpose"), "mode": ev.get("mode")} | spec
    rounds_done = max(
        (int(ev["round"]) for ev in events if ev.get("event") == "round_completed" and "round" in ev), default=0
    )
    eps = [float(ev["epsilon"]) for ev in events if ev.get("event") == "dp_spent" and "epsilon" in ev]
    evaluation = status.get("evaluation") or (report or {}).get("evaluation") or model.get("evaluation") or {}
    return {
        "job_id": job_dir.name,
        "requester_agency": requester_agency(_json(job_dir / "submission.json")),
        "state": status.get("state", "unknown"),
        "reason": status.get("reason"),
        "run_id": status.get("run_id"),
        "updated_at": status.get("updated_at"),
        "spec": {k: spec.get(k) for k in _SPEC_KEYS if k in spec},
        "rounds_done": rounds_done,
        "epsilon": (model.get("dp") or {}).get("epsilon")
        if isinstance(model.get("dp"), dict)
        else (eps[-1] if eps else None),
        "evaluation": evaluation,
        "model_sha256": model.get("model_sha256"),
        "decisions": model.get("decisions")
        or {
            ev["agency"]: {
                "approved": ev["event"] == "job_approved",
                "reason": ev.get("reason"),
                "epsilon": ev.get("epsilon"),
            }
            for ev in events
            if ev.get("event") in ("job_approved", "job_refused") and "agency" in ev
        },
        "curve": _curve(report, events),
    }


def list_jobs(jobs_dir: Path | None, keep: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """The newest MAX_JOBS job summaries `keep` accepts (all by default), filtered before the limit."""
    if jobs_dir is None or not jobs_dir.is_dir():
        return []
    dirs = [d for d in jobs_dir.iterdir() if d.is_dir() and JOB_ID.match(d.name)]
    dirs.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    out = []
    for d in dirs:
        summary = job_summary(d)
        if keep is not None and not keep(summary):
            continue
        summary.pop("decisions")
        out.append(summary)
        if len(out) == MAX_JOBS:
            break
    return out


def job_detail(jobs_dir: Path | None, job_id: str) -> dict[str, Any]:
    if jobs_dir is None or not JOB_ID.match(job_id) or not (jobs_dir / job_id).is_dir():
        raise NotFound("no such training job", job_id=job_id if JOB_ID.match(job_id) else "?")
    job_dir = jobs_dir / job_id
    events = _events(job_dir / "events.jsonl")
    return job_summary(job_dir) | {"events": events[-300:]}


def _spends(ledger: PrivacyLedger | Path | None) -> list[tuple[str, str, float, str]]:
    """The ledger's charges; a ledger file not there yet, or unreadable, shows none."""
    if isinstance(ledger, PrivacyLedger):
        try:
            return [(s.dataset, s.job_id, s.epsilon, s.at) for s in ledger.spends()]
        except StoreUnavailable:
            return []
    if ledger is None or not ledger.exists():
        return []
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT dataset, job_id, epsilon, at FROM spends ORDER BY at").fetchall()
        return [(str(d), str(j), float(e), str(a)) for d, j, e, a in rows]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def privacy_budgets(policy_dir: Path, ledger: PrivacyLedger | Path | None) -> list[dict[str, Any]]:
    """Per registered dataset: ε cap (policies/datasets.toml), ε spent and by which jobs (ledger)."""
    try:
        datasets = load_model(policy_dir / "datasets.toml", DatasetsFile, "datasets")[0].datasets
    except ConfigError:
        datasets = ()
    spends: dict[str, list[dict[str, Any]]] = {}
    for dataset, job_id, epsilon, at in _spends(ledger):
        spends.setdefault(dataset, []).append({"job_id": job_id, "epsilon": epsilon, "at": at})
    out = []
    for d in datasets:
        items = spends.pop(d.id, [])
        spent = sum(s["epsilon"] for s in items)
        out.append(
            {
                "dataset": d.id,
                "agency": d.agency,
                "description": d.description,
                "cap": d.epsilon_cap,
                "spent": round(spent, 6),
                "remaining": round(max(0.0, d.epsilon_cap - spent), 6),
                "jobs": items,
            }
        )
    for dataset, items in spends.items():  # spent on a dataset no longer registered: show, never hide
        out.append(
            {
                "dataset": dataset,
                "agency": None,
                "description": "not in datasets.toml",
                "cap": None,
                "spent": round(sum(s["epsilon"] for s in items), 6),
                "remaining": None,
                "jobs": items,
            }
        )
    return out
