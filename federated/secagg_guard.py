"""SecAgg+ at a node on the job's terms, not the coordinator's, with the node's own record of it.

A job approved with `secagg = true` was approved because no single update leaves a node in the
clear. Two things in Flower leave that to the coordinator: which ClientApp its app bundle names
(xgate's plain `federated.horizontal_client:app` answered any job: exact moments and updates), and
the SecAgg+ configuration its setup message carries (`secaggplus_mod` takes the share count and
reconstruction threshold as sent: a threshold of 2 among 6 nodes lets two colluding parties unmask
one node's update). So, at the node:

* `require_transport`: the plain app serves only jobs approved without SecAgg+, the SecAgg+ app
  only jobs approved with it (federated/horizontal_client.py);
* `secaggplus_checked` wraps Flower's `secaggplus_mod` and refuses, before Flower acts on it, a
  setup whose share count is below the job's `min_nodes` (or above the nodes sampled) or whose
  threshold is below ceil(2/3 of the shares) (or above them), a key-sharing stage with fewer
  neighbours than `min_nodes`, and an unmask request listing a node both active and dead (which
  would hand out both secrets of that node's mask);
* at setup it signs the keys Flower's mod made with the node's certified SuperNode key, and at
  key sharing, before Flower's mod encrypts a share, it refuses a neighbour whose keys are not
  signed for this job, run and round by a SuperNode certificate of the federation CA, of a
  distinct agency (federated/secagg_keys.py: otherwise the coordinator could list key pairs of
  its own as neighbours and rebuild the node's masks);
* before unmask it answers xgate's own stage `xgate-consistency` (Flower's mod never sees it):
  refusing lists that call the node dead or not active, or call active a node whose shares it
  never received, it signs once per round the active and dead lists it will be sent; at unmask it
  refuses lists other than those, or that fewer than `threshold` distinct agencies verified at
  share-keys signed (Bonawitz et al. 2017's ConsistencyCheck, federated/secagg_keys.py: otherwise
  different lists to different nodes hand out both secrets of one node's mask);
* it records, per SecAgg+ round, what the node ran with (`secagg.jsonl` in the run's directory
  beside the ledger, the one `federated/run_releases.py` keeps): written once the round's update
  went out (after admission), then at unmask, so the evidence does not come from the coordinator;
  it names the neighbours' agencies and fingerprints of their keys and certificates.

Errors Flower's mod raises on a malformed stage message become InvalidInput (protocol text only:
node ids and stage names); an error from the node's own training passes through as raised, for
`federated.guarded_app` to decide what the coordinator sees.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from federated import node, secagg_keys
from federated.jobs import JobSpec, Mode, job_from_run_config, require_mode
from federated.pooled_stats import PHASE_KEY
from xgate.errors import InvalidInput, PolicyDenied

__all__ = ["EVIDENCE", "check_setup", "min_threshold", "record", "require_transport", "run_dir", "secaggplus_checked"]

STATE_KEY = "xgate_secagg"  # this node's own record of the round in its Context state (never the coordinator's)
EVIDENCE = "secagg.jsonl"
_FIT_CONFIG = "fitins.config"
# what the node checked of its neighbours at share-keys (federated/secagg_keys.py)
_NEIGHBOURS = ("authenticated", "neighbour_agencies", "neighbour_keys", "neighbour_certificates")
_PARAMS = (Key.SAMPLE_NUMBER, Key.SHARE_NUMBER, Key.THRESHOLD, Key.CLIPPING_RANGE, Key.TARGET_RANGE, Key.MOD_RANGE)


def require_transport(job: JobSpec, secagg: bool) -> None:
    """Refuse a job through the ClientApp that does not match how it was approved."""
    if job.secagg and not secagg:
        raise PolicyDenied(
            f"job '{job.job_id}' was approved with secagg = true: this node answers it only through SecAgg+"
            " (federated.horizontal_client:secagg_app), never in the clear"
        )
    if secagg and not job.secagg:
        raise PolicyDenied(
            f"job '{job.job_id}' was approved with secagg = false: run it with federated.horizontal_client:app"
        )


def min_threshold(shares: int) -> int:
    """The least reconstruction threshold a node accepts: ceil(2 * shares / 3)."""
    return -(-2 * shares // 3)


def _int(configs: ConfigRecord, key: str) -> int:
    value = configs.get(key)
    if type(value) is not int:  # bool is an int to isinstance
        raise InvalidInput(f"SecAgg+ setup: '{key}' must be an integer")
    return value


def check_setup(job: JobSpec, configs: ConfigRecord) -> dict[str, Any]:
    """The setup stage's parameters, refused when weaker than the job allows."""
    sampled, shares, threshold = (_int(configs, k) for k in (Key.SAMPLE_NUMBER, Key.SHARE_NUMBER, Key.THRESHOLD))
    if shares < job.min_nodes:
        raise PolicyDenied(
            f"SecAgg+ setup refused: secrets split into {shares} shares, job '{job.job_id}' needs at least"
            f" min_nodes = {job.min_nodes}"
        )
    if shares > sampled:
        raise PolicyDenied(f"SecAgg+ setup refused: {shares} shares among {sampled} sampled nodes")
    if not min_threshold(shares) <= threshold <= shares:
        raise PolicyDenied(
            f"SecAgg+ setup refused: reconstruction threshold {threshold} of {shares} shares; this node"
            f" requires {min_threshold(shares)}..{shares} (at least two thirds)"
        )
    params = {k: configs.get(k) for k in (*_PARAMS, Key.MAX_WEIGHT)}
    return {k: v for k, v in params.items() if isinstance(v, int | float)}


def _check_share_keys(job: JobSpec, msg: Message, ctxt: Context, configs: ConfigRecord, state: dict[str, Any]) -> None:
    neighbours = len([k for k in configs if k != Key.STAGE])
    if neighbours < job.min_nodes:
        raise PolicyDenied(
            f"SecAgg+ key sharing refused: {neighbours} nodes to share with, job '{job.job_id}' needs"
            f" min_nodes = {job.min_nodes}"
        )
    own, group = (state.get("pk1"), state.get("pk2")), state.get("group")
    if not isinstance(own[0], bytes) or not isinstance(own[1], bytes) or not isinstance(group, str):
        raise InvalidInput("SecAgg+ share-keys before this node's setup")
    nc = node.node_config(dict(ctxt.node_config))
    where = secagg_keys.binding(job, ctxt.run_id, group)
    relayed = msg.content.config_records.get(secagg_keys.STATEMENTS)
    state.update(secagg_keys.check_neighbours(nc, ctxt.node_id, where, (own[0], own[1]), configs, relayed))
    state["neighbours"] = neighbours


def _sign_setup(job: JobSpec, msg: Message, ctxt: Context, reply: Message, state: dict[str, Any]) -> None:
    """This node's statement over the keys Flower's mod just made, for this job, run and round."""
    nc = node.node_config(dict(ctxt.node_config))
    group = str(msg.metadata.group_id)
    pk1, pk2 = secagg_keys.sign_setup(reply, nc, secagg_keys.binding(job, ctxt.run_id, group), ctxt.node_id)
    state.update({"pk1": pk1, "pk2": pk2, "group": group})


def _check_unmask(configs: ConfigRecord) -> tuple[list[int], list[int]]:
    """The active and dead lists, sorted; refused when a node is listed both."""
    active, dead = configs.get(Key.ACTIVE_NODE_ID_LIST), configs.get(Key.DEAD_NODE_ID_LIST)
    if not isinstance(active, list) or not isinstance(dead, list):
        raise InvalidInput("SecAgg+ unmask: the active and dead node lists are missing")
    if not all(type(n) is int for n in (*active, *dead)):
        raise InvalidInput("SecAgg+ unmask: the active and dead node lists must list node ids")
    if both := set(active) & set(dead):
        raise PolicyDenied(
            f"SecAgg+ unmask refused: {len(both)} node(s) listed both active and dead (their mask's two secrets)"
        )
    return sorted(cast(list[int], active)), sorted(cast(list[int], dead))


def _check_view(state: dict[str, Any], node_id: int, active: list[int], dead: list[int]) -> None:
    """What this node knows of the round itself (Bonawitz et al.'s U3 within U2): it sent its masked
    vector, so it is active, and every other node listed active sent it a share at collect-masked-
    vectors (whose mask it added): a node it never masked with cannot be active."""
    if "sources" not in state:
        raise PolicyDenied("SecAgg+ unmask refused: this node sent no masked vector this round")
    if node_id not in active or node_id in dead:
        raise PolicyDenied("SecAgg+ unmask refused: this node sent its masked vector but is not listed active")
    if unknown := sorted(set(active) - {node_id} - set(cast(list[int], state["sources"]))):
        raise PolicyDenied(
            f"SecAgg+ unmask refused: node(s) {unknown} listed active never sent this node their shares (it did"
            " not mask with them)"
        )


def _sign_consistency(
    job: JobSpec, msg: Message, ctxt: Context, configs: ConfigRecord, state: dict[str, Any]
) -> Message:
    """xgate's consistency stage (handled here, not by Flower's mod): sign, once per SecAgg+ round,
    the active and dead lists this node will be sent at unmask; the same lists again get the same
    signature, other lists are refused."""
    active, dead = _check_unmask(configs)
    _check_view(state, ctxt.node_id, active, dead)
    if "signed_active" in state:
        if (list(state["signed_active"]), list(state["signed_dead"])) != (active, dead):
            raise PolicyDenied(
                "SecAgg+ consistency refused: this node already signed other unmask lists this round (one signature"
                " per round)"
            )
    else:
        signature = b""
        if state.get("authenticated") is True:
            nc = node.node_config(dict(ctxt.node_config))
            pk1, pk2 = cast(bytes, state["pk1"]), cast(bytes, state["pk2"])
            where = secagg_keys.binding(job, ctxt.run_id, str(state["group"]))
            signature = secagg_keys.sign_lists(
                nc, where, ctxt.node_id, secagg_keys.key_fingerprint(pk1, pk2), active, dead
            )
        state.update({"signed_active": active, "signed_dead": dead, "consistency_signature": signature})
    content = RecordDict()
    if state["consistency_signature"]:
        content.config_records[secagg_keys.SIGNATURE] = ConfigRecord({"signature": state["consistency_signature"]})
    return Message(content, reply_to=msg)


def _consistent(
    job: JobSpec, msg: Message, ctxt: Context, state: dict[str, Any], active: list[int], dead: list[int]
) -> tuple[bool, list[str]]:
    """At unmask: the lists are those this node signed and `threshold` distinct agencies verified at
    share-keys signed them too (secagg_keys.check_consistency). A node without a CA cannot tell:
    (False, [])."""
    _check_view(state, ctxt.node_id, active, dead)
    if state.get("authenticated") is not True:
        return False, []
    if "signed_active" not in state:
        raise PolicyDenied("SecAgg+ unmask refused: this node was not asked to sign the unmask lists (consistency)")
    if (list(state["signed_active"]), list(state["signed_dead"])) != (active, dead):
        raise PolicyDenied("SecAgg+ unmask refused: these active and dead lists are not the ones this node signed")
    nc = node.node_config(dict(ctxt.node_config))
    where = secagg_keys.binding(job, ctxt.run_id, str(state["group"]))
    relayed = msg.content.config_records.get(secagg_keys.SIGNATURES)
    threshold = int(state[Key.THRESHOLD])
    return True, secagg_keys.check_consistency(where, ctxt.node_id, nc.agency, threshold, state, active, dead, relayed)


def run_dir(job: JobSpec, context: Context) -> Path:
    """The run's directory beside the node's ledger (as federated/run_releases.py's)."""
    nc = node.node_config(dict(context.node_config))
    return nc.ledger.parent / "fl-cache" / job.job_id / f"run-{context.run_id}"


def record(job: JobSpec, context: Context, entry: dict[str, Any]) -> None:
    """Append one line of this node's SecAgg+ evidence for the run."""
    directory = run_dir(job, context)
    directory.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"ts": round(time.time(), 3), "job_id": job.job_id, **entry}, sort_keys=True)
    with (directory / EVIDENCE).open("a") as fh:
        fh.write(line + "\n")


def _state(context: Context) -> dict[str, Any]:
    kept = context.state.config_records.get(STATE_KEY)
    return dict(kept) if kept is not None else {}


def _round_of(msg: Message) -> dict[str, Any]:
    """The round the coordinator says this update is for (its fit config), as recorded."""
    config = msg.content.config_records.get(_FIT_CONFIG)
    if config is None:
        return {}
    out = {"phase": config.get(PHASE_KEY) or "training", "round": config.get("server_round")}
    return {k: v for k, v in out.items() if isinstance(v, int | str) and not isinstance(v, bool)}


class _Inner(Exception):
    """An exception from the node's own handler, carried through Flower's mod unchanged."""

    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc


def _flower(msg: Message, ctxt: Context, call_next: ClientAppCallable, stage: str) -> Message:
    def inner(m: Message, c: Context) -> Message:
        try:
            return call_next(m, c)
        except Exception as exc:
            raise _Inner(exc) from exc

    try:
        return secaggplus_mod(msg, ctxt, inner)
    except _Inner as wrapped:
        raise wrapped.exc from None
    except (KeyError, TypeError, ValueError) as exc:  # Flower's checks of the stage messages
        raise InvalidInput(f"SecAgg+ {stage}: {str(exc)[:200]}") from None


def secaggplus_checked(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `secaggplus_mod`, after this node's checks of the job and the stage's configuration."""
    job = job_from_run_config(dict(ctxt.run_config))
    require_mode(job, Mode.HORIZONTAL)  # before any SecAgg+ stage is answered (a vertical job is secagg by default)
    require_transport(job, secagg=True)
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)  # as secaggplus_mod does: evaluate and query are not aggregated
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is None:
        raise InvalidInput("a train message of a SecAgg+ job without its SecAgg+ stage configuration")
    stage = str(configs.get(Key.STAGE, ""))
    state = _state(ctxt)
    if stage == secagg_keys.CONSISTENCY:  # xgate's stage: Flower's mod never sees it
        reply = _sign_consistency(job, msg, ctxt, configs, state)
        ctxt.state.config_records[STATE_KEY] = ConfigRecord(state)
        return reply
    unmask: tuple[list[int], list[int]] | None = None
    consistent: tuple[bool, list[str]] = (False, [])
    if stage == Stage.SETUP:
        state = {**check_setup(job, configs), "setups": int(state.get("setups", 0)) + 1}
    elif stage == Stage.SHARE_KEYS:  # before Flower's mod encrypts any share
        _check_share_keys(job, msg, ctxt, configs, state)
    elif stage == Stage.UNMASK:
        unmask = _check_unmask(configs)
        consistent = _consistent(job, msg, ctxt, state, *unmask)
    elif stage == Stage.COLLECT_MASKED_VECTORS:
        state.update(_round_of(msg))
    reply = _flower(msg, ctxt, call_next, stage)
    if stage == Stage.SETUP:
        _sign_setup(job, msg, ctxt, reply, state)
    if stage == Stage.COLLECT_MASKED_VECTORS:  # the update went out (admitted): what it was masked under
        sources = configs.get(Key.SOURCE_LIST)
        state["sources"] = [n for n in sources if type(n) is int] if isinstance(sources, list) else []
        params = {
            k: state[k] for k in (*_PARAMS, Key.MAX_WEIGHT, "neighbours", *_NEIGHBOURS, "phase", "round") if k in state
        }
        record(job, ctxt, {"stage": stage, "secagg_round": state.get("setups", 0), **params})
    elif unmask is not None:
        record(job, ctxt, {"stage": stage, "secagg_round": state.get("setups", 0), "active": len(unmask[0]),
                           "dead": len(unmask[1]), "threshold": state.get(Key.THRESHOLD),
                           "consistent": consistent[0], "consistency_signers": consistent[1]})  # fmt: skip
    ctxt.state.config_records[STATE_KEY] = ConfigRecord(state)
    return reply
