"""Horizontal ClientApp (legacy NumPyClient API, the one SecAgg+ supports in flwr 1.41).

fit: refuse unless this node approved the job, and answer each round once per run, in order
(federated/run_releases.py); in a job that standardises, the first train
message is the statistics round (this node's moment vector, federated/pooled_stats.py) and the
pooled statistics come with every later message; train logistic regression locally from the
global weights (with DP-SGD for record-level DP, its accounting recorded in the node's ledger
first: federated/dp_sgd.py); send the update (delta), for node-level DP L2-clipped to the job's
clip with Gaussian noise added at the node (federated/dp.py), then
validated/clipped/weight-capped by xgate (federated.updates) before `secaggplus_mod` masks it.
evaluate: per-label score histograms on the node's holdout (no per-subject scores leave); in a
record-DP job once, after the last round, coarsened and noised (federated/holdout_dp.py).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.client import NumPyClient

from federated import dp, dp_sgd, holdout_dp, model, node, node_keys, pooled_stats, updates
from federated.admission import admit_at_node, charge_run, record_dp_plan
from federated.guarded_app import GuardedClientApp
from federated.jobs import DPUnit, JobSpec, Mode, job_from_run_config, require_mode
from federated.run_releases import RunReleases
from federated.secagg_guard import require_transport, secaggplus_checked
from xgate.errors import InvalidInput
from xgate.logging import get_logger

log = get_logger(__name__)


class HorizontalClient(NumPyClient):
    def __init__(
        self,
        job: JobSpec,
        nc: node.NodeConfig,
        max_weight: int,
        ledger_check: bool,
        n_features: int = 0,
        *,
        run_id: str,
    ) -> None:
        self.job, self.nc, self.max_weight, self.n_features = job, nc, max_weight, n_features
        self.run_id = run_id  # each run of a DP job is charged at this node (admission.charge_run)
        if ledger_check:
            admit_at_node(job, nc.agency, nc.ledger, nc.store, nc.policy_dir, nc.policy_ca)
        # Each release once per run and in order, whatever the coordinator asks (Flower keeps no
        # state); made after admission, so messages of jobs nobody approved leave nothing on disk.
        self.releases = RunReleases(nc.ledger.parent / "fl-cache" / job.job_id / f"run-{run_id}")
        self._data: node.Split | None = None

    def data(self, config: dict[str, Any]) -> node.Split:
        # Flower builds a client per message (SecAgg+ has 4 per round); read the store only when needed.
        if self._data is None:
            rows = node.labelled_rows(self.job, self.nc)
            stats = None
            if self.job.standardises():  # checked before any row is encoded: a refusal never depends on them
                stats = pooled_stats.stats_from_config(
                    str(config.get(pooled_stats.CONFIG_KEY, "{}")), rows.infos, rows.encodings, record_dp=self.record_dp
                )
            # Record-level DP: standardised values within the bound the checked statistics imply.
            data = rows.encoded(stats, bound=pooled_stats.STANDARDISED_BOUND if self.record_dp else None)
            width = data.x_train.shape[1]
            if self.n_features and width != self.n_features:  # the coordinator sized the model from its catalogue
                raise InvalidInput(
                    f"node '{self.nc.agency}' encodes the job's features into {width} columns, the coordinator"
                    f" expects {self.n_features}: its catalogue and this node's element declarations differ"
                )
            self._data = data
        return self._data

    @property
    def record_dp(self) -> bool:
        return self.job.dp is not None and self.job.dp.unit is DPUnit.RECORD

    @property
    def node_dp(self) -> bool:
        return self.job.dp is not None and self.job.dp.unit is DPUnit.NODE

    def node_dp_release(self, delta: list[np.ndarray]) -> tuple[list[np.ndarray], bool]:
        """Node-level DP at the node (federated/dp.py): the update clipped to the job's clip plus
        Gaussian noise of sd z * clip, from the job definition alone (the coordinator's config can
        neither loosen the clip nor spare the noise), so this update is DP before it leaves the node,
        whatever the coordinator or SecAgg+ then do. Each run is charged, as for record-level DP: a
        coordinator re-running the job to average fresh noise pays for it. Returns the noisy update
        and whether it was clipped."""
        dp_spec = self.job.dp
        assert dp_spec is not None
        charge_run(self.nc.ledger, self.job, self.run_id)  # a further run's fresh noise spends ε again
        clipped, was_clipped = updates.l2_clip(delta, dp_spec.clip)
        z = dp.noise_for_epsilon(dp_spec.epsilon, self.job.rounds, dp_spec.delta)
        sd = dp.node_noise_sd(z, dp_spec.clip)
        rng = np.random.default_rng(secrets.randbits(128))
        return [a + rng.normal(0.0, sd, a.shape) for a in clipped], was_clipped

    def dp_plan(self, train_n: int) -> dp_sgd.Plan:
        """This node's DP-SGD schedule (and statistics release, when the job standardises),
        calibrated to the job's epsilon for its released row count: drawn once per run
        (dp_sgd.noisy_rows), so nothing the node sends carries its exact count. A node without
        training rows plans from its noisy count like any other and sends noise alone: a refusal
        would tell the coordinator that its one record is absent."""
        dp = self.job.dp
        assert dp is not None
        # Paid for before anything of the run is drawn: the count, and a refusal that follows from it.
        charge_run(self.nc.ledger, self.job, self.run_id)
        rows = self.releases.value(
            "rows", lambda: dp_sgd.noisy_rows(train_n, np.random.default_rng(secrets.randbits(128)))
        )
        try:
            return self._plan_from(rows)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None

    def _plan_from(self, rows: float) -> dp_sgd.Plan:
        dp = self.job.dp
        assert dp is not None
        return dp_sgd.plan(
            dp.epsilon,
            dp.delta,
            dp.clip,
            rows=rows,
            batch=self.job.batch_size,
            rounds=self.job.rounds,
            local_epochs=self.job.local_epochs,
            standardises=self.job.standardises(),
        )

    def record_plan(self, plan: dp_sgd.Plan) -> None:
        """In the ledger before the first release that touches the rows (refused past the approval)."""
        record_dp_plan(self.nc.ledger, self.job, run_id=self.run_id, **plan.ledger_entry())

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        rows = node.labelled_rows(self.job, self.nc)
        return [model.lr_init(sum(model.encoded_width(i, e) for i, e in zip(rows.infos, rows.encodings, strict=True)))]

    def pool_statistics(self) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """The statistics round: this node's moment vector, weighted by its training rows; SecAgg+
        (when the job uses it) masks it like a model update, so only the pooled sum is opened."""
        rows = node.labelled_rows(self.job, self.nc)
        train_n = int((~rows.test).sum())
        moments = rows.train_moments()
        weight = train_n
        if self.record_dp:  # a Gaussian mechanism, accounted with the DP-SGD steps that follow
            plan = self.dp_plan(train_n)
            assert plan.stats_sigma is not None
            self.record_plan(plan)
            moments = pooled_stats.noisy_moments(
                moments, train_n, plan.rows, plan.stats_sigma, np.random.default_rng(secrets.randbits(128))
            )
            weight = round(plan.rows)  # the released count weighs the pooled mean, never the exact one
        log.info(
            "statistics_pooled",
            agency=self.nc.agency,
            features=len(pooled_stats.standardised(rows.infos, rows.encodings)),
            dp_noise=self.record_dp,
        )
        return [moments], max(1, min(weight, self.max_weight)), {"agency": self.nc.agency}

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        if config.get(pooled_stats.PHASE_KEY) == pooled_stats.STATISTICS_PHASE:
            if not self.job.standardises():  # nothing to pool: the round would release row counts only
                raise InvalidInput("this job standardises no feature: it has no statistics round")
            self.releases.once("statistics", before="fit")
            return self.pool_statistics()
        rnd = _round_of(config)
        data = self.data(config)
        w0 = _weights(parameters, data.x_train.shape[1] + 1, "fit")
        self.releases.numbered("fit", rnd, self.job.rounds)
        examples = len(data.y_train)
        if self.record_dp:
            plan = self.dp_plan(len(data.y_train))
            self.record_plan(plan)
            w1 = dp_sgd.train(w0, data.x_train, data.y_train, plan, lr=self.job.learning_rate, l2=self.job.l2)
            examples = max(1, round(plan.rows))  # FedAvg weighs by the released count
        else:
            w1 = model.lr_train(
                w0,
                data.x_train,
                data.y_train,
                epochs=self.job.local_epochs,
                lr=self.job.learning_rate,
                batch=self.job.batch_size,
                l2=self.job.l2,
                seed=self.job.seed + rnd,
            )
        delta = [w1 - w0]
        if not all(np.isfinite(a).all() for a in delta):
            # Finite weights the coordinator chose can overflow (inf - inf) for one row alone: a
            # failure here would say whether that row is in this node's data. The node sends no
            # step instead (plus its noise under DP); the cause stays in its own log.
            log.warning("update_not_finite", agency=self.nc.agency, round=rnd)
            delta = [np.zeros_like(a) for a in delta]
        dp_clipped = False
        if self.node_dp:
            delta, dp_clipped = self.node_dp_release(delta)
            examples = self.max_weight  # a node's row count is its data too: every node weighs the same
        prepared = updates.prepare_update(
            delta, [w0.shape], examples, bound=self.job.update_bound, max_weight=self.max_weight
        )
        if prepared.clipped_values or prepared.weight_capped or dp_clipped:
            log.info(
                "update_scaled",
                agency=self.nc.agency,
                clipped_coordinates=prepared.clipped_values,
                weight_capped=prepared.weight_capped,
                dp_clipped=dp_clipped,
            )
        return prepared.arrays, prepared.weight, {"agency": self.nc.agency}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        # Each answer describes the holdout under weights of the coordinator's choosing. Without DP,
        # once per round, exact. In a record-DP job, once per run, after the last round, as noisy
        # histograms (federated/holdout_dp.py); the run is charged before it answers, as for a
        # training release: else runs that only evaluate would get such answers for free.
        rnd = _round_of(config)
        if self.record_dp and rnd != self.job.rounds:
            raise InvalidInput(
                f"evaluate round {rnd} refused: a record-level DP job is evaluated once, after its last"
                f" round ({self.job.rounds})"
            )
        data = self.data(config)
        w = _weights(parameters, data.x_test.shape[1] + 1, "evaluate")
        self.releases.numbered("evaluate", rnd, self.job.rounds)
        plan = self.dp_plan(len(data.y_train)) if self.record_dp else None
        if plan is not None:
            self.record_plan(plan)
        with np.errstate(all="ignore"):  # huge weights: overflow is binned (score_histograms), never raised
            scores = model.lr_predict(w, data.x_test)
        pos, neg = node.score_histograms(scores, data.y_test)
        holdout: dict[str, float] = {}
        if self.record_dp:
            assert self.job.dp is not None
            multiplier = holdout_dp.noise_multiplier(self.job.dp.epsilon, self.job.dp.delta)
            pos, neg = holdout_dp.release(pos, neg, multiplier)
            holdout = {"dp_holdout_sigma": multiplier}
        # The training label count is exact: under record-level DP it stays here (the coordinator
        # then sets the threshold from the holdout's histograms, which it gets anyway).
        exact = not (self.record_dp or self.node_dp)  # node-level DP: the row count fit hides stays hidden here too
        counts = {"train_pos": int(data.y_train.sum()), "train_n": len(data.y_train)} if exact else {}
        metrics = {
            "agency": self.nc.agency,
            "hist_pos": json.dumps(pos.tolist()),
            "hist_neg": json.dumps(neg.tolist()),
            **counts,
            # The node attests what it trained on (the coordinator may have no access to the store).
            "data_sha256": node_keys.data_digest(self.nc.store, self.nc.ledger, self.job.elements()),
            **(plan.as_metrics() if plan is not None else {}),
            **holdout,
        }
        if self.record_dp:  # the exact loss and row count would give the held-out labels away
            return 0.0, 1, metrics
        if not len(data.y_test):  # no held-out rows here (a small node, the hash rule): no loss to weigh
            return 0.0, 0, metrics
        return model.bce(scores, data.y_test), len(data.y_test), metrics


def _weights(parameters: list[np.ndarray], width: int, what: str) -> np.ndarray:
    """The global weights as `width` finite floats, or InvalidInput: checked before any row is used,
    so no error depends on what the rows hold (width comes from declared metadata)."""
    try:
        w = np.asarray(parameters[0]) if parameters else np.zeros(0)
        ok = w.dtype.kind in "biuf" and w.shape == (width,)
        w = w.astype(np.float64) if ok else w
    except (TypeError, ValueError):
        ok = False
    if not ok or not np.all(np.isfinite(w)):
        raise InvalidInput(
            f"{what}: the weights must be {width} finite numbers (the job's encoded features and a bias)"
        )
    return w


def _round_of(config: dict[str, Any]) -> int:
    try:
        return int(config["server_round"])
    except (KeyError, TypeError, ValueError):
        raise InvalidInput("a train or evaluate message without its round ('server_round')") from None


def client_fn(context: Context) -> Any:
    job = job_from_run_config(dict(context.run_config))
    require_mode(job, Mode.HORIZONTAL)  # before anything is read or charged
    nc = node.node_config(dict(context.node_config))
    max_weight = int(context.run_config.get("max-weight", 1_000_000))
    if job.max_weight is not None and max_weight != job.max_weight:
        # the job's own cap (which its requester may have signed) wins over the coordinator's config
        raise InvalidInput(f"the run config's max-weight {max_weight} is not the job's max_weight {job.max_weight}")
    n_features = int(context.run_config.get("n-features", 0))
    # Always checked: the run config is the coordinator's to write, so it cannot turn admission off.
    return HorizontalClient(job, nc, max_weight, True, n_features, run_id=str(context.run_id)).to_client()


def plain_client_fn(context: Context) -> Any:
    """`app`'s: jobs approved with `secagg = false` only (a SecAgg+ job answered here would leave in the clear)."""
    job = job_from_run_config(dict(context.run_config))
    require_mode(job, Mode.HORIZONTAL)  # the mode first: a vertical job is told it is vertical
    require_transport(job, secagg=False)
    return client_fn(context)


def secagg_client_fn(context: Context) -> Any:
    """`secagg_app`'s: jobs approved with `secagg = true` only."""
    job = job_from_run_config(dict(context.run_config))
    require_mode(job, Mode.HORIZONTAL)
    require_transport(job, secagg=True)
    return client_fn(context)


# SecAgg+'s mod insists on SecAgg+ stage configs in every train message, so plain jobs use `app`.
# Guarded: a failure reaches the coordinator as an XgateError's public message only (federated/guarded_app.py);
# the SecAgg+ configuration is checked against the job and recorded at the node (federated/secagg_guard.py).
app = GuardedClientApp(client_fn=plain_client_fn)
secagg_app = GuardedClientApp(client_fn=secagg_client_fn, mods=[secaggplus_checked])
