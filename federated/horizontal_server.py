"""Horizontal ServerApp: FedAvg over model updates, optionally SecAgg+ and DP (added at the nodes).

The legacy workflow API is used because SecAgg+ only exists there in flwr 1.41. Our own fit
and evaluate workflows replace Flower's plain ones so that every wait has a timeout (Flower's
default fit workflow waits for replies without one). The strategy receives updates (deltas),
rejects bad ones with a logged reason (plain mode) or checks the unmasked aggregate (SecAgg+),
enforces min_nodes, and writes audit events and per-round aggregates into the job directory.
A job that standardises a feature first runs a statistics round of its own (StatisticsRound):
the pooled means and spreads, by the same aggregation, go with every later message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.common import Code, EvaluateRes, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from federated import dp, dp_sgd, node, pooled_stats, secagg_keys, updates
from federated.datasets import ElementInfo
from federated.events import JsonlSink, OnEvent, arrays_sha256, make_event
from federated.grid_io import allowed_nodes, exchange, quick_polls
from federated.jobs import DPUnit, JobSpec
from federated.model import Stats, resolve
from xgate.errors import InvalidInput
from xgate.errors import JobFailed as JobFailed  # re-exported: raised here


class BoundedClientManager(SimpleClientManager):
    """Flower waits up to 24 h for nodes by default; never wait longer than the round timeout.

    `allowed`: the job's node ids. Other online nodes (a long-lived SuperLink serves every agency)
    are acknowledged to Flower's node updater, which fails on a refusal, but never sampled.
    """

    def __init__(self, timeout: float, allowed: set[int] | None = None) -> None:
        super().__init__()
        self.timeout = timeout
        self.allowed = allowed

    def register(self, client: ClientProxy) -> bool:
        if self.allowed is not None and int(client.node_id) not in self.allowed:
            return True
        return bool(super().register(client))

    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool:
        return bool(super().wait_for(num_clients, timeout=int(min(timeout, self.timeout))))


def _checked_updates(
    results: list[tuple[ClientProxy, FitRes]],
    shapes: list[tuple[int, ...]],
    bound: float,
    max_weight: int,
    participants: list[int],
    reject: Callable[[int, str], None],
) -> list[tuple[list[np.ndarray], int]]:
    """Plain aggregation: each node's update checked (updates.check_update); a malformed one is
    reported, its node taken out of `participants`, and left out of the mean."""
    accepted = []
    for proxy, fitres in results:
        arrays = parameters_to_ndarrays(fitres.parameters)
        try:
            updates.check_update(arrays, shapes, fitres.num_examples, bound=bound, max_weight=max_weight)
        except Exception as exc:  # noqa: BLE001  # any malformed update drops that node, never the server
            reject(int(proxy.node_id), str(exc))
            participants.remove(int(proxy.node_id))
            continue
        accepted.append((arrays, fitres.num_examples))
    return accepted


def _fail(emit: OnEvent, job_id: str, reason: str) -> None:
    emit(make_event(job_id, "job_failed", reason=reason))
    raise JobFailed(reason)


class StatisticsRound(FedAvg):
    """The round before training in a job that standardises: every node sends its moment vector
    (federated/pooled_stats.py) as it would a model update, so under SecAgg+ only the pooled sum is
    opened, and the pooled means and spreads go to every node with each later message."""

    def __init__(self, job: JobSpec, emit: OnEvent, max_weight: int, infos: list[ElementInfo]) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=job.min_nodes,
            min_evaluate_clients=0,
            min_available_clients=job.min_nodes,
            on_fit_config_fn=lambda r: {pooled_stats.PHASE_KEY: pooled_stats.STATISTICS_PHASE},
            accept_failures=True,
        )
        self.job, self.emit, self.max_weight = job, emit, max_weight
        self.infos, self.encodings = infos, resolve(infos, job.encodings)
        self.features = [i.id for i in pooled_stats.standardised(infos, self.encodings)]
        self.width = pooled_stats.MOMENTS * len(self.features)
        self.stats: Stats = {}

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        return ndarrays_to_parameters([np.zeros(self.width)])

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
        instructions = list(super().configure_fit(server_round, parameters, client_manager))
        if len(instructions) < self.job.min_nodes:
            _fail(self.emit, self.job.job_id, f"statistics round: only {len(instructions)} nodes available, "
                  f"job needs {self.job.min_nodes}")  # fmt: skip
        return instructions

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Any]]:
        participants = sorted(int(p.node_id) for p, _ in results)
        if self.job.secagg:  # SecAgg+ put the unmasked weighted mean into every result
            pooled = parameters_to_ndarrays(results[0][1].parameters)[0] if results else np.zeros(0)
        else:
            accepted = _checked_updates(
                results, [(self.width,)], 1.0, self.max_weight, participants,
                lambda node_id, why: self.emit(make_event(self.job.job_id, "update_rejected", round=0,
                                                          node_id=node_id, reason=why)),
            )  # fmt: skip
            pooled = updates.weighted_mean(accepted)[0] if accepted else np.zeros(0)
        if len(participants) < self.job.min_nodes:
            _fail(self.emit, self.job.job_id, f"statistics round: {len(participants)} usable moment vectors, "
                  f"job needs {self.job.min_nodes} nodes")  # fmt: skip
        try:
            noise_sd = 0.0
            if self.job.dp is not None and self.job.dp.unit is DPUnit.RECORD:  # the nodes' noisy_moments
                weights = [max(1, int(fit.num_examples)) for _, fit in results]
                noise_sd = pooled_stats.pooled_noise_sd(len(self.features), weights, dp_sgd.STATS_NOISE_MULTIPLIER)
            self.stats = pooled_stats.pooled_stats(self.infos, self.encodings, pooled, noise_sd=noise_sd)
        except InvalidInput as exc:
            _fail(self.emit, self.job.job_id, f"statistics round: {exc.message}")
        self.emit(make_event(self.job.job_id, "statistics_pooled", participants=participants, features=self.features,
                             secure_aggregation=self.job.secagg))  # fmt: skip
        return None, {}


def pool_statistics(grid: Grid, context: Context, job: JobSpec, emit: OnEvent, max_weight: int) -> Stats:
    """Run the statistics round (one Flower round of its own, before training's) and return its stats."""
    infos = pooled_stats.infos_from_config(str(context.run_config.get("feature-infos", "[]")))
    strategy = StatisticsRound(job, emit, max_weight, infos)
    legacy = _legacy_context(context, job, strategy, rounds=1)
    fit_wf = _fit_workflow(
        job,
        emit,
        max_weight,
        phase=pooled_stats.STATISTICS_PHASE,
        clipping_range=pooled_stats.STATS_CLIPPING_RANGE,
        quantization_range=pooled_stats.STATS_QUANTIZATION_RANGE,
        modulus_range=pooled_stats.STATS_MODULUS_RANGE,
    )
    DefaultWorkflow(fit_workflow=fit_wf, evaluate_workflow=lambda grid, context: None)(grid, legacy)
    if not strategy.stats:
        _fail(emit, job.job_id, "the statistics round ended without pooled statistics")
    return strategy.stats


class XgateFedAvg(FedAvg):
    def __init__(self, job: JobSpec, job_dir: Path, emit: OnEvent, max_weight: int, n_features: int = 0) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            min_fit_clients=job.min_nodes,
            min_evaluate_clients=job.min_nodes,
            min_available_clients=job.min_nodes,
            on_fit_config_fn=lambda r: {"server_round": r, **self.shared_config},
            on_evaluate_config_fn=lambda r: {"server_round": r, **self.shared_config},
            accept_failures=True,
        )
        self.job, self.job_dir, self.emit, self.max_weight = job, job_dir, emit, max_weight
        self.shared_config: dict[str, Any] = {}  # with every train and evaluate message (pooled statistics)
        # Initial zeros from the catalogue-derived width: Flower's fallback asks one random node,
        # without a timeout, which would hang on a node that is already gone.
        self.initial = ndarrays_to_parameters([np.zeros(n_features + 1)]) if n_features else None
        self.current: list[np.ndarray] = []
        self.released: list[np.ndarray] = []
        self.curve: list[dict[str, Any]] = []
        self.final_eval: dict[str, Any] = {}
        self.data_digests: dict[str, dict[str, str]] = {}  # node id -> what the node attests it trained on
        self.dp_nodes: dict[str, dict[str, Any]] = {}  # agency -> its DP-SGD accounting (record-level DP)
        self._record_dp = job.dp is not None and job.dp.unit is DPUnit.RECORD

    def _event(self, name: str, **fields: Any) -> None:
        self.emit(make_event(self.job.job_id, name, **fields))

    def _fail(self, reason: str) -> None:
        _fail(self.emit, self.job.job_id, reason)

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        return self.initial

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
        self.current = parameters_to_ndarrays(parameters)
        instructions = super().configure_fit(server_round, parameters, client_manager)
        if len(instructions) < self.job.min_nodes:
            self._fail(
                f"round {server_round}: only {len(instructions)} nodes available, job needs {self.job.min_nodes}"
            )
        return list(instructions)

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Any]]:
        shapes = [a.shape for a in self.current]
        for failure in failures:
            if isinstance(failure, tuple):
                node_id, reason = int(failure[0].node_id), str(failure[1])[:200]
            else:
                node_id, reason = None, str(failure)[:200]
            self._event("node_dropped", round=server_round, node_id=node_id, reason=reason)
        participants = sorted(int(p.node_id) for p, _ in results)
        if self.job.secagg:
            mean = parameters_to_ndarrays(results[0][1].parameters) if results else []
            try:
                updates.check_aggregate(mean, shapes, bound=self.job.update_bound)
            except Exception as exc:  # noqa: BLE001  # any malformed aggregate fails the run, never the server
                self._fail(f"round {server_round}: secure aggregate rejected: {exc}")
        else:
            accepted = _checked_updates(
                results, shapes, self.job.update_bound, self.max_weight, participants,
                lambda node_id, why: self._event("update_rejected", round=server_round, node_id=node_id, reason=why),
            )  # fmt: skip
            mean = updates.weighted_mean(accepted) if accepted else []
        if len(participants) < self.job.min_nodes:
            self._fail(
                f"round {server_round}: {len(participants)} usable updates, job needs {self.job.min_nodes} nodes"
            )
        digest = arrays_sha256(mean)
        np.savez(self.job_dir / f"aggregate-round{server_round:03d}.npz", *mean)
        self._event("round_completed", round=server_round, participants=participants, aggregate_sha256=digest)
        return ndarrays_to_parameters([c + m for c, m in zip(self.current, mean, strict=True)]), {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
        if self._record_dp and server_round != self.job.rounds:
            return []  # record-DP nodes answer one (noisy) evaluation, after the last round
        self.released = parameters_to_ndarrays(parameters)
        return list(super().configure_evaluate(server_round, parameters, client_manager))

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: list[Any]
    ) -> tuple[float | None, dict[str, Any]]:
        if not results:
            return None, {}
        hists = [(json.loads(str(r.metrics["hist_pos"])), json.loads(str(r.metrics["hist_neg"]))) for _, r in results]
        if len({len(h) for pair in hists for h in pair}) != 1:
            self._fail(f"round {server_round}: the nodes' evaluation histograms differ in their number of bins")
        # Summed as they are: record-DP nodes' noisy counts may be negative (federated/holdout_dp.py).
        pos = np.sum([p for p, _ in hists], axis=0)
        neg = np.sum([n for _, n in hists], axis=0)
        if all("train_pos" in r.metrics for _, r in results):
            prevalence = sum(int(r.metrics["train_pos"]) for _, r in results) / max(
                1, sum(int(r.metrics["train_n"]) for _, r in results)
            )
        else:  # record-level DP: nodes keep their exact training label counts; the holdout's instead
            prevalence = float(pos.sum() / max(1.0, pos.sum() + neg.sum()))
        rep = node.histogram_report(np.asarray(pos), np.asarray(neg), threshold=prevalence)
        for proxy, r in results:
            if "dp_epsilon" in r.metrics:  # record-level DP: the node's own accountant
                self.dp_nodes[str(r.metrics["agency"])] = {
                    k: r.metrics[k]
                    for k in (
                        "dp_epsilon",
                        "dp_sigma",
                        "dp_sample_rate",
                        "dp_steps",
                        "dp_rows_noisy",
                        "dp_count_sigma",
                        "dp_stats_sigma",
                        "dp_holdout_sigma",
                    )
                    if k in r.metrics  # dp_stats_sigma: only in a job that standardises
                }
            if "data_sha256" in r.metrics:
                self.data_digests[str(proxy.node_id)] = {
                    "agency": str(r.metrics["agency"]),
                    "data_sha256": str(r.metrics["data_sha256"]),
                }
        if self._record_dp:  # the nodes keep their exact loss: estimated from the noisy histograms
            loss = node.histogram_loss(np.asarray(pos), np.asarray(neg))
        else:  # weighted by held-out rows; a node without any adds nothing (its bce would be NaN)
            held_out = sum(r.num_examples for _, r in results)
            if not held_out:
                self._fail(f"round {server_round}: no node holds a held-out row: there is nothing to evaluate")
            loss = sum(r.loss * r.num_examples for _, r in results) / held_out
        row = {
            "round": server_round,
            "loss": loss,
            "threshold": prevalence,
            **rep,
            "nodes": sorted(str(r.metrics["agency"]) for _, r in results),
        }
        self.curve.append(row)
        self.final_eval = row
        self._event(
            "round_evaluated",
            round=server_round,
            auc=rep["auc"],
            balanced_accuracy=rep["balanced_accuracy"],
            model_sha256=arrays_sha256(self.released),
        )
        return loss, {}


def _send(grid: Grid, context: LegacyContext, kind: str, instructions: list[Any], timeout: float) -> dict[int, Message]:
    rnd = context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND]
    to_rd = compat.fitins_to_recorddict if kind == MessageType.TRAIN else compat.evaluateins_to_recorddict
    msgs = [
        Message(content=to_rd(ins, True), dst_node_id=proxy.node_id, message_type=kind, group_id=str(rnd))
        for proxy, ins in instructions
    ]
    return exchange(grid, msgs, timeout)


def _split(replies: dict[int, Message], proxies: dict[int, Any], parse: Any, key: str) -> tuple[list[Any], list[Any]]:
    results: list[Any] = []
    failures: list[Any] = []
    for nid, proxy in proxies.items():
        msg = replies.get(nid)
        if msg is None:
            failures.append((proxy, f"no {key} reply before the round timeout"))
        elif msg.has_content():
            res = parse(msg.content)
            (results if res.status.code == Code.OK else failures).append((proxy, res))
        else:
            failures.append((proxy, f"{key} failed: {(msg.error.reason or '')[:200]}"))
    return results, failures


def make_fit_workflow(timeout: float) -> Any:
    def fit(grid: Grid, context: LegacyContext) -> None:
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        rnd = int(cfg[Key.CURRENT_ROUND])  # type: ignore[arg-type]
        params = compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        instructions = context.strategy.configure_fit(rnd, params, context.client_manager)
        replies = _send(grid, context, MessageType.TRAIN, instructions, timeout)
        proxies = {p.node_id: p for p, _ in instructions}
        results, failures = _split(replies, proxies, lambda rd: compat.recorddict_to_fitres(rd, False), "fit")
        new_params, _ = context.strategy.aggregate_fit(rnd, results, failures)
        if new_params is not None:
            context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(new_params, True)

    return fit


def make_evaluate_workflow(timeout: float) -> Any:
    def evaluate(grid: Grid, context: LegacyContext) -> None:
        rnd = int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])  # type: ignore[arg-type]
        params = compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        instructions = context.strategy.configure_evaluate(rnd, params, context.client_manager)
        if not instructions:
            return
        replies = _send(grid, context, MessageType.EVALUATE, instructions, timeout)
        proxies = {p.node_id: p for p, _ in instructions}
        results, failures = _split(replies, proxies, compat.recorddict_to_evaluateres, "evaluate")
        context.strategy.aggregate_evaluate(rnd, results, failures)

    return evaluate


class RecordedSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, recording per round what its own state says happened: a
    `secagg_round` event (evidence, not the configuration echoed) with the round, whether the
    aggregate was unmasked, the nodes sampled, the masked vectors collected, the shares each
    secret was split into, the reconstruction threshold and the nodes whose shares unmasked it;
    `secagg_halted` naming the stage when a stage stops the protocol.

    Each node's statement over its SecAgg+ keys (signed by its certified SuperNode key) is taken
    from its setup reply and relayed beside the keys at share-keys (federated/secagg_keys.py): the
    nodes share their secrets only with keys their agencies signed. Before the unmask messages go
    out, each of their nodes signs the lists it will be sent (xgate's consistency stage) and every
    unmask message carries all the signatures: a node unmasks only lists that threshold-many
    agencies signed (Bonawitz et al. 2017's ConsistencyCheck; federated/secagg_keys.py).

    A round whose aggregate could not be unmasked (a stage halted, or too few shares were left)
    fails the job, naming the nodes that dropped out (`node_dropped`): otherwise the rounds after
    it would pass as run while the model stayed the last aggregated one."""

    def __init__(self, emit: OnEvent, job_id: str, phase: str = "training", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._emit, self._job_id, self._masked, self._phase = emit, job_id, 0, phase
        self._statements = secagg_keys.StatementRelay()  # each node's signed keys, relayed at share-keys
        self._masked_ids: set[int] = set()

    @staticmethod
    def _round(context: LegacyContext) -> int:
        return int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])  # type: ignore[arg-type]

    def _halted(self, stage: str, context: LegacyContext, state: Any) -> None:
        self._emit(make_event(self._job_id, "secagg_halted", round=self._round(context), phase=self._phase, stage=stage,
                              active=len(state.active_node_ids), threshold=state.threshold))  # fmt: skip
        self._not_aggregated(stage, context, state)

    def _not_aggregated(self, stage: str, context: LegacyContext, state: Any) -> None:
        """Fail the job: this round has no aggregate. The nodes sampled that sent no masked vector
        (or, before that stage, are no longer active) dropped out, and are named."""
        server_round = self._round(context)
        still = self._masked_ids if stage == "unmask" else set(state.active_node_ids)
        dropped = sorted(set(state.sampled_node_ids) - still)
        why = f"dropped out during secure aggregation ({self._phase}, {stage})"
        for node_id in dropped:
            self._emit(make_event(self._job_id, "node_dropped", round=server_round, node_id=int(node_id), reason=why))
        _fail(
            self._emit,
            self._job_id,
            f"{self._phase} round {server_round}: secure aggregation could not complete ({stage}): "
            f"{len(dropped)} of {len(state.sampled_node_ids)} nodes dropped out, too few shares to unmask the rest",
        )

    def setup_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        ok = bool(super().setup_stage(self._statements.collecting(grid), context, state))
        if not ok:
            self._halted("setup", context, state)
        return ok

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        ok = bool(super().share_keys_stage(self._statements.relaying(grid), context, state))
        if not ok:
            self._halted("share_keys", context, state)
        return ok

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        ok = bool(super().collect_masked_vectors_stage(grid, context, state))
        self._masked = len(state.active_node_ids)
        self._masked_ids = set(state.active_node_ids)
        if not ok:
            self._halted("collect_masked_vectors", context, state)
        return ok

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        ok = bool(super().unmask_stage(self._statements.consistent(grid), context, state))
        self._emit(
            make_event(
                self._job_id,
                "secagg_round",
                round=self._round(context),
                phase=self._phase,
                unmasked=ok,
                sampled=len(state.sampled_node_ids),
                masked_vectors=self._masked,
                shares=state.num_shares,
                threshold=state.threshold,
                share_holders=len(state.active_node_ids),
            )
        )
        if not ok:
            self._not_aggregated("unmask", context, state)
        return ok


def _legacy_context(context: Context, job: JobSpec, strategy: Any, *, rounds: int) -> LegacyContext:
    return LegacyContext(
        context,
        config=ServerConfig(num_rounds=rounds, round_timeout=job.round_timeout_s),
        strategy=strategy,
        client_manager=BoundedClientManager(job.round_timeout_s, allowed_nodes(context.run_config)),
    )


def _fit_workflow(
    job: JobSpec,
    emit: OnEvent,
    max_weight: int,
    *,
    clipping_range: float,
    quantization_range: int,
    modulus_range: int,
    phase: str = "training",
) -> Any:
    """SecAgg+ (its rounds recorded) when the job asks for it, else the plain fit workflow with timeouts."""
    if not job.secagg:
        return make_fit_workflow(job.round_timeout_s)
    return RecordedSecAggPlus(
        emit,
        job.job_id,
        phase=phase,
        num_shares=1.0,
        reconstruction_threshold=0.7,  # round(0.7 n) >= ceil(2n/3), the least a node accepts (secagg_guard)
        max_weight=float(max_weight),
        clipping_range=clipping_range,
        quantization_range=quantization_range,
        modulus_range=modulus_range,
        timeout=job.round_timeout_s,
    )


def run_horizontal(grid: Grid, context: Context, job: JobSpec, job_dir: Path) -> None:
    grid = quick_polls(grid)  # Flower's SecAgg+ stages pull replies every 0.2 s, not every 3 s
    emit = JsonlSink(job_dir / "server-events.jsonl")
    max_weight = int(context.run_config.get("max-weight", 1_000_000))
    n_features = int(context.run_config.get("n-features", 0))
    strategy = XgateFedAvg(job, job_dir, emit, max_weight, n_features)
    stats: Stats = {}
    if job.standardises():
        stats = pool_statistics(grid, context, job, emit, max_weight)
        strategy.shared_config = {pooled_stats.CONFIG_KEY: pooled_stats.stats_to_config(stats)}
    noise = 0.0
    if job.dp is not None and job.dp.unit is DPUnit.NODE:
        # Each node clips and noises its own update (HorizontalClient.node_dp_release): the
        # coordinator adds nothing, and the guarantee does not rest on it or on SecAgg+.
        noise = dp.noise_for_epsilon(job.dp.epsilon, job.rounds, job.dp.delta)
    legacy = _legacy_context(context, job, strategy, rounds=job.rounds)
    fit_wf = _fit_workflow(
        job,
        emit,
        max_weight,
        clipping_range=job.update_bound,
        quantization_range=updates.SECAGG_QUANTIZATION_RANGE,
        modulus_range=updates.SECAGG_MODULUS_RANGE,
    )
    DefaultWorkflow(fit_workflow=fit_wf, evaluate_workflow=make_evaluate_workflow(job.round_timeout_s))(grid, legacy)
    if not strategy.curve:
        strategy._fail("training finished without a completed, evaluated round")
    final = compat.arrayrecord_to_parameters(legacy.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
    weights = parameters_to_ndarrays(final)
    np.savez(job_dir / "model.npz", *weights)
    summary: dict[str, Any] = {
        "curve": strategy.curve,
        "evaluation": strategy.final_eval,
        "model_sha256": arrays_sha256(weights),
        "data_digests": strategy.data_digests,
    }
    if stats:  # the model's inputs are (x - mean) / sd: whoever applies it needs these
        summary["standardisation"] = {k: {"mean": mean, "sd": sd} for k, (mean, sd) in sorted(stats.items())}
    if job.dp is not None and job.dp.unit is DPUnit.RECORD:
        # Each node's accountant (DP-SGD at the node): the job's epsilon bounds every node's dataset.
        eps = max((float(n["dp_epsilon"]) for n in strategy.dp_nodes.values()), default=0.0)
        summary["dp"] = {
            "unit": "record",
            "epsilon": eps,
            "delta": job.dp.delta,
            "clip": job.dp.clip,
            "nodes": strategy.dp_nodes,
        }
        emit(make_event(job.job_id, "dp_spent", rounds=job.rounds, epsilon=eps, delta=job.dp.delta, unit="record"))
    elif job.dp is not None:
        eps = dp.epsilon_spent(noise, job.rounds, job.dp.delta)
        summary["dp"] = {
            "unit": "node",
            "epsilon": eps,
            "delta": job.dp.delta,
            "noise_multiplier": noise,
            "clip": job.dp.clip,
            "noise_added_by": "nodes",
            "node_noise_sd": dp.node_noise_sd(noise, job.dp.clip),
            "flower_rdp_epsilon": dp.flower_epsilon(noise, job.rounds, job.dp.delta, job.min_nodes),
        }
        emit(
            make_event(
                job.job_id, "dp_spent", rounds=job.rounds, epsilon=eps, delta=job.dp.delta, noise_multiplier=noise
            )
        )
    (job_dir / "server-summary.json").write_text(json.dumps(summary, indent=1, default=float))
