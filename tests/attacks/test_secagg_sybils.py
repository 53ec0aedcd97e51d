"""A malicious coordinator runs one real node's SecAgg+ round with Sybil neighbours whose keys it
made (review: /tmp/review-f/secagg_sybil.py).

Every count federated/secagg_guard.py checks passes (3 shares >= min_nodes 3, threshold 2 =
ceil(2*3/3), 3 neighbours), the node encrypts its shares of its self-mask seed and of sk1 to the
Sybils, and the coordinator rebuilds its masks from its masked vector: the node's individual update
and example count, without any unmask stage. Now every neighbour's keys must come signed, for this
job, run and round, by a SuperNode certificate of the federation CA of a distinct agency
(federated/secagg_keys.py); the node refuses the share-keys stage before sharing anything.

Real Flower messages through xgate's `secagg_app` and Flower's own `secaggplus_mod`; the
coordinator's side is built here as Flower's `SecAggPlusWorkflow` (and xgate's `StatementRelay`)
would, then forged.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Message, MessageType
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from crypto import pki
from crypto.flower_keys import FlowerSecurity, load_private_key, prepare_flower_security
from crypto.key_statements import SecAggBinding, sign_secagg_keys
from federated import secagg_keys
from federated.horizontal_client import secagg_app
from federated.jobs import JobSpec
from tests.attacks.test_secagg_downgrade import NIDS, RUN_ID, Node, _collect, _error, _fit, _job, _setup, _stage

import flwr.client.mod.secure_aggregation.secaggplus_mod  # noqa: F401  # isort: skip

MOD = sys.modules["flwr.client.mod.secure_aggregation.secaggplus_mod"]
MODULUS, TARGET = 1 << 32, 1 << 20
VICTIM, SYBILS = 11, (12, 13)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[FlowerSecurity, FlowerSecurity]:
    """The federation's material (r11..r14 certified) and a CA of the coordinator's own."""
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca", "federation CA")
    ours = prepare_flower_security(root / "fed", ["r11", "r12", "r13", "r14"], ca_dir=root / "ca")
    foreign = prepare_flower_security(root / "foreign", ["r12", "r13"])  # an ephemeral CA nobody trusts
    return ours, foreign


def _certified(root: Path, nid: int, job: JobSpec, security: FlowerSecurity) -> Node:
    node = Node(root, nid, job)
    key = security.supernode_keys[f"r{nid}"]
    node.context.node_config.update(
        {"identity_key": str(key.private_key), "identity_cert": str(key.certificate),
         "ca_cert": str(security.ca_cert), "crl": str(security.crl)}
    )  # fmt: skip
    return node


def _signer(security: FlowerSecurity, agency: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = security.supernode_keys[agency]
    assert key.certificate is not None
    return load_private_key(key.private_key), key.certificate.read_bytes()


def _where(job: JobSpec, **change: Any) -> SecAggBinding:
    fields = {"job_id": job.job_id, "job_digest": job.digest(), "run_id": RUN_ID, "round": "1", **change}
    return SecAggBinding(**fields)


Fake = dict[str, bytes]
Forge = Callable[[dict[int, Fake]], dict[str, list[bytes]]]


def _fakes() -> dict[int, Fake]:
    out = {}
    for fid in SYBILS:
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        out[fid] = {"sk1": private_key_to_bytes(sk1), "pk1": public_key_to_bytes(pk1),
                    "sk2": private_key_to_bytes(sk2), "pk2": public_key_to_bytes(pk2)}  # fmt: skip
    return out


def _signed(
    key: ec.EllipticCurvePrivateKey, cert: bytes, where: SecAggBinding, agency: str, nid: int, f: Fake
) -> list[bytes]:
    return [agency.encode(), cert, sign_secagg_keys(key, cert, where, agency, nid, f["pk1"], f["pk2"])]


def _attack(node: Node, forge: Forge, monkeypatch: pytest.MonkeyPatch) -> tuple[Message, dict[str, Any]]:
    """The coordinator's Sybil round against `node`: its setup, a share-keys list of the node and two
    Sybils (statements from `forge`), and, when the node shares, its masked vector opened."""
    captured: dict[str, Any] = {}
    multiply = MOD.parameters_multiply

    def spy(params: list[np.ndarray], factor: float) -> Any:  # ground truth only: what the node masked
        captured["truth"], captured["ratio"] = [p.copy() for p in params], factor
        return multiply(params, factor)

    monkeypatch.setattr(MOD, "parameters_multiply", spy)
    setup = node.ask(secagg_app, _setup(3, 2))
    assert not setup.has_error(), setup.error.reason
    cfg = setup.content.config_records[RECORD_KEY_CONFIGS]
    pk1, pk2 = cast(bytes, cfg[Key.PUBLIC_KEY_1]), cast(bytes, cfg[Key.PUBLIC_KEY_2])
    own = setup.content.config_records.get(secagg_keys.STATEMENT)  # relayed as the node sent it
    fakes = _fakes()
    public = {str(VICTIM): [pk1, pk2], **{str(f): [v["pk1"], v["pk2"]] for f, v in fakes.items()}}
    content = _stage(Stage.SHARE_KEYS, **public)
    mine: dict[str, list[bytes]] = {}
    if own is not None:
        mine[str(VICTIM)] = [
            str(own["agency"]).encode(),
            cast(bytes, own["certificate"]),
            cast(bytes, own["signature"]),
        ]
    content.config_records[secagg_keys.STATEMENTS] = ConfigRecord({**mine, **forge(fakes)})
    shared = node.ask(secagg_app, content)
    if shared.has_error():
        return shared, {}
    res = shared.content.config_records[RECORD_KEY_CONFIGS]
    seed_shares = []
    for dst, ciphertext in zip(
        cast(list[int], res[Key.DESTINATION_LIST]), cast(list[bytes], res[Key.CIPHERTEXT_LIST]), strict=True
    ):
        key = generate_shared_key(bytes_to_private_key(fakes[dst]["sk2"]), bytes_to_public_key(pk2))
        seed_shares.append(share_keys_plaintext_separate(decrypt(key, ciphertext))[2])
    rd_seed = combine_shares(seed_shares)  # 2 shares = threshold: the node's self-mask seed
    cts, srcs = [], []
    for fid, v in fakes.items():  # the Sybils' well-formed ciphertexts to the node
        key = generate_shared_key(bytes_to_private_key(v["sk2"]), bytes_to_public_key(pk2))
        cts.append(encrypt(key, share_keys_plaintext_concat(fid, VICTIM, b"\0" * 32, b"\0" * 32)))
        srcs.append(fid)
    fit = _fit({"server_round": 1})
    fit.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(
        {Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: cts, Key.SOURCE_LIST: srcs}
    )
    masked = node.ask(secagg_app, fit)
    assert not masked.has_error(), masked.error.reason
    sent = cast(list[bytes], masked.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS])
    vec = [bytes_to_ndarray(b) for b in sent]
    dims = [a.shape for a in vec]
    vec = parameters_subtraction(vec, pseudo_rand_gen(rd_seed, MODULUS, dims))
    for fid, v in fakes.items():  # the pairwise masks: the coordinator holds the Sybils' sk1
        shared_key = generate_shared_key(bytes_to_private_key(v["sk1"]), bytes_to_public_key(pk1))
        pm = pseudo_rand_gen(shared_key, MODULUS, dims)
        vec = parameters_subtraction(vec, pm) if fid < VICTIM else parameters_addition(vec, pm)
    vec = parameters_mod(vec, MODULUS)
    return shared, {
        "ratio": int(vec[0][0]) / TARGET,
        "update": dequantize(vec[1:], 1.0, TARGET)[0],
        "true_ratio": captured["ratio"],
        "true_update": captured["truth"][0] * captured["ratio"],
    }


def _unsigned(fakes: dict[int, Fake]) -> dict[str, list[bytes]]:
    return {}


# -- the attack: before (the check off) it reads the node's update; now the node refuses --------


def test_positive_control_without_the_check_sybils_read_the_nodes_update(
    tmp_path: Path, pki_dir: tuple[FlowerSecurity, FlowerSecurity], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(secagg=True)
    node = _certified(tmp_path, VICTIM, job, pki_dir[0])
    monkeypatch.setattr(secagg_keys, "check_neighbours", lambda *args, **kwargs: {})  # the code before the fix
    shared, opened = _attack(node, _unsigned, monkeypatch)
    assert not shared.has_error()
    assert float(np.max(np.abs(opened["update"] - opened["true_update"]))) < 1e-5  # the node's own update
    assert opened["ratio"] == pytest.approx(opened["true_ratio"], abs=1e-5)  # and its example count
    assert opened["true_ratio"] > 0 and float(np.max(np.abs(opened["true_update"]))) > 1e-3


def _foreign(pki_dir: tuple[FlowerSecurity, FlowerSecurity], job: JobSpec) -> Forge:
    """Each Sybil signed by a SuperNode certificate of a CA the coordinator made itself."""
    return lambda fakes: {
        str(f): _signed(*_signer(pki_dir[1], f"r{f}"), _where(job), f"r{f}", f, v) for f, v in fakes.items()
    }


def _superlink(pki_dir: tuple[FlowerSecurity, FlowerSecurity], job: JobSpec) -> Forge:
    """Each Sybil signed by the coordinator's own federation certificate (its SuperLink's)."""
    sec = pki_dir[0]
    key = serialization.load_pem_private_key(sec.superlink_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = sec.superlink_cert.read_bytes()
    return lambda fakes: {str(f): _signed(key, cert, _where(job), "gateway", f, v) for f, v in fakes.items()}


def _accomplice_twice(pki_dir: tuple[FlowerSecurity, FlowerSecurity], job: JobSpec) -> Forge:
    """Both Sybils signed by one certified accomplice agency."""
    return lambda fakes: {
        str(f): _signed(*_signer(pki_dir[0], "r14"), _where(job), "r14", f, v) for f, v in fakes.items()
    }


@pytest.mark.parametrize(
    ("forge", "expected"),
    [
        (lambda pki_dir, job: _unsigned, "did not relay one signed statement per listed node"),
        (_foreign, "certificate not issued by the federation CA"),
        (_superlink, "wrong kind of certificate: flower-superlink"),
        (_accomplice_twice, "an agency is listed for two nodes"),
    ],
    ids=["unsigned", "coordinator-ca", "superlink-cert", "one-agency-twice"],
)
def test_sybil_neighbours_are_refused_before_any_share(
    tmp_path: Path,
    pki_dir: tuple[FlowerSecurity, FlowerSecurity],
    monkeypatch: pytest.MonkeyPatch,
    forge: Callable[[Any, JobSpec], Forge],
    expected: str,
) -> None:
    job = _job(secagg=True)
    node = _certified(tmp_path, VICTIM, job, pki_dir[0])
    shared, opened = _attack(node, forge(pki_dir, job), monkeypatch)
    assert expected in _error(shared)
    assert not shared.has_content() and not opened  # no ciphertext of any share left the node
    assert node.evidence() == []


# -- a neighbour's statement binds its agency, node, keys, job, run and round -------------------

Case = Callable[[JobSpec, Fake, Fake], tuple[SecAggBinding, str, int, Fake]]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (lambda job, f, g: (_where(job, job_id="sa-other"), "r12", 12, f), "not the ones its certified key signed"),
        (lambda job, f, g: (_where(job, job_digest="0" * 64), "r12", 12, f), "not the ones its certified key signed"),
        (lambda job, f, g: (_where(job, run_id=RUN_ID + 1), "r12", 12, f), "not the ones its certified key signed"),
        (lambda job, f, g: (_where(job, round="2"), "r12", 12, f), "not the ones its certified key signed"),
        (lambda job, f, g: (_where(job), "r12", 13, f), "not the ones its certified key signed"),
        (lambda job, f, g: (_where(job), "r12", 12, g), "not the ones its certified key signed"),
        (lambda job, f, g: (_where(job), "r13", 12, f), "certificate of another agency: r12"),
        (lambda job, f, g: (_where(job), "r11", 12, f), "this node's own agency 'r11' is listed for itself only"),
    ],
    ids=["job", "job-digest", "run", "round", "node-id", "other-keys", "agency", "own-agency"],
)
def test_a_statement_of_another_job_run_round_node_or_agency_is_refused(
    tmp_path: Path,
    pki_dir: tuple[FlowerSecurity, FlowerSecurity],
    monkeypatch: pytest.MonkeyPatch,
    case: Case,
    expected: str,
) -> None:
    """r12's certified key signs node 12's Sybil keys with one field wrong (r13's is right)."""
    job = _job(secagg=True)
    node = _certified(tmp_path, VICTIM, job, pki_dir[0])
    other = _fakes()[12]

    def forge(fakes: dict[int, Fake]) -> dict[str, list[bytes]]:
        where, agency, nid, keys = case(job, fakes[12], other)
        key, cert = _signer(pki_dir[0], "r12")
        sig = sign_secagg_keys(key, cert, where, agency, nid, keys["pk1"], keys["pk2"])
        return {
            "12": [agency.encode(), cert, sig],
            "13": _signed(*_signer(pki_dir[0], "r13"), _where(job), "r13", 13, fakes[13]),
        }

    shared, opened = _attack(node, forge, monkeypatch)
    assert expected in _error(shared)
    assert not shared.has_content() and not opened


def test_positive_control_statements_of_certified_distinct_agencies_are_accepted(
    tmp_path: Path, pki_dir: tuple[FlowerSecurity, FlowerSecurity], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the check cannot stop (docs/THREAT_MODEL.md): threshold-many certified agencies that
    collude with the coordinator are neighbours like any other."""
    job = _job(secagg=True)
    node = _certified(tmp_path, VICTIM, job, pki_dir[0])

    def forge(fakes: dict[int, Fake]) -> dict[str, list[bytes]]:
        return {str(f): _signed(*_signer(pki_dir[0], f"r{f}"), _where(job), f"r{f}", f, v) for f, v in fakes.items()}

    shared, _ = _attack(node, forge, monkeypatch)
    assert not shared.has_error()
    (collect,) = node.evidence()
    assert collect["authenticated"] is True and collect["neighbour_agencies"] == ["r12", "r13"]


# -- the honest round, relayed by the ServerApp's StatementRelay, unmasks ----------------------


def test_an_honest_round_of_certified_nodes_unmasks_and_records_its_neighbours(
    tmp_path: Path, pki_dir: tuple[FlowerSecurity, FlowerSecurity]
) -> None:
    job = _job(secagg=True)
    nodes = [_certified(tmp_path, nid, job, pki_dir[0]) for nid in NIDS]
    relay = secagg_keys.StatementRelay()
    replies = [n.ask(secagg_app, _setup(len(nodes), 2)) for n in nodes]
    relay._collect(replies)
    assert sorted(relay.statements) == list(NIDS)
    public = {}
    for n, reply in zip(nodes, replies, strict=True):
        cfg = reply.content.config_records[RECORD_KEY_CONFIGS]
        public[str(n.nid)] = [cfg[Key.PUBLIC_KEY_1], cfg[Key.PUBLIC_KEY_2]]
    fwd: dict[int, tuple[list[int], list[bytes]]] = {n.nid: ([], []) for n in nodes}
    for n in nodes:
        msg = Message(
            _stage(Stage.SHARE_KEYS, **public), dst_node_id=n.nid, message_type=MessageType.TRAIN, group_id="1"
        )
        relay._relay([msg])
        reply = n.ask(secagg_app, msg.content)
        assert not reply.has_error(), reply.error.reason
        res = reply.content.config_records[RECORD_KEY_CONFIGS]
        dsts, ciphertexts = cast(list[int], res[Key.DESTINATION_LIST]), cast(list[bytes], res[Key.CIPHERTEXT_LIST])
        for dst, ciphertext in zip(dsts, ciphertexts, strict=True):
            fwd[dst][0].append(n.nid)
            fwd[dst][1].append(ciphertext)
    for n in nodes:
        masked = n.ask(secagg_app, _collect(*fwd[n.nid]))
        assert not masked.has_error(), masked.error.reason
    lists = {Key.ACTIVE_NODE_ID_LIST: list(NIDS), Key.DEAD_NODE_ID_LIST: []}
    signatures = {}  # the consistency round (tests/attacks/test_secagg_split_unmask.py)
    for n in nodes:
        signed = n.ask(secagg_app, _stage(secagg_keys.CONSISTENCY, **lists))
        assert not signed.has_error(), signed.error.reason
        signatures[str(n.nid)] = [
            relay.statements[n.nid][1],
            signed.content.config_records[secagg_keys.SIGNATURE]["signature"],
        ]
    for n in nodes:
        content = _stage(Stage.UNMASK, **lists)
        content.config_records[secagg_keys.SIGNATURES] = ConfigRecord(signatures)  # type: ignore[arg-type]
        unmask = n.ask(secagg_app, content)
        assert not unmask.has_error(), unmask.error.reason
        assert sorted(cast(list[int], unmask.content.config_records[RECORD_KEY_CONFIGS][Key.NODE_ID_LIST])) == list(
            NIDS
        )
    for n in nodes:
        collect, _ = n.evidence()
        others = [f"r{nid}" for nid in NIDS if nid != n.nid]
        assert collect["authenticated"] is True and collect["neighbour_agencies"] == others
        assert len(collect["neighbour_keys"]) == len(collect["neighbour_certificates"]) == 2
        expected = [secagg_keys.key_fingerprint(*cast(list[bytes], public[str(nid)])) for nid in NIDS if nid != n.nid]
        assert collect["neighbour_keys"] == expected
