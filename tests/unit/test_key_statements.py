"""Signed agreement keys (crypto/key_statements.py) and the roster a PSI node accepts
(federated/psi_keys.py): every refusal, and that a statement covers exactly one job, agency and key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from crypto import pki
from crypto.flower_keys import load_private_key
from crypto.key_statements import KeyStatement, sign_statement, signed_message, verify_rows, verify_statement
from crypto.peers import load_cert
from federated import psi, psi_keys
from federated.node import NodeConfig, node_config, node_config_arg
from tests.psi_relay import federation_pki
from xgate.errors import ConfigError, CryptoError

JOB = "job-7"


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[psi_keys.Trust, dict[str, psi_keys.Identity]]:
    return federation_pki(tmp_path_factory.mktemp("pki"), ["tax", "hrss"])


LIST = psi_keys.list_digest(b"the node's blinded hello list")


def _statement(identity: psi_keys.Identity, agency: str, key: bytes, job: str = JOB) -> KeyStatement:
    return sign_statement(load_private_key(identity.key), identity.certificate.read_bytes(), job, agency, key, LIST)


def test_a_statement_verifies_for_its_job_agency_and_key(
    federation: tuple[psi_keys.Trust, dict[str, psi_keys.Identity]],
) -> None:
    trust, ids = federation
    key = psi.agreement_public(psi.new_key())
    assert verify_statement(_statement(ids["tax"], "tax", key), JOB, trust.ca_cert, trust.crl) == key


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"key": b"\x01" * 32}, "is not the one its certified key signed for this job"),
        ({"list_sha256": psi_keys.list_digest(b"a list of candidates")}, "key or list is not the one its certified"),
        ({"signature": b""}, "sent its agreement key unsigned"),
        ({"certificate": b""}, "sent its agreement key unsigned"),
        ({"certificate": b"not a certificate"}, "not a PEM X.509 certificate"),
        ({"agency": "hrss"}, "certificate of another agency: tax"),
    ],
)
def test_a_changed_statement_is_refused_naming_what_failed(
    federation: tuple[psi_keys.Trust, dict[str, psi_keys.Identity]], change: dict[str, object], error: str
) -> None:
    trust, ids = federation
    good = _statement(ids["tax"], "tax", psi.agreement_public(psi.new_key()))
    bad = KeyStatement(**{**good.__dict__, **change})  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match=error):
        verify_statement(bad, JOB, trust.ca_cert, trust.crl)


def test_a_statement_for_another_job_is_refused(
    federation: tuple[psi_keys.Trust, dict[str, psi_keys.Identity]],
) -> None:
    trust, ids = federation
    other_job = _statement(ids["tax"], "tax", psi.agreement_public(psi.new_key()), job="job-8")
    with pytest.raises(CryptoError, match="not the one its certified key signed for this job"):
        verify_statement(other_job, JOB, trust.ca_cert, trust.crl)


def test_another_agencys_signature_under_this_certificate_is_refused(
    federation: tuple[psi_keys.Trust, dict[str, psi_keys.Identity]],
) -> None:
    trust, ids = federation
    key = psi.agreement_public(psi.new_key())
    forged = KeyStatement(
        "tax", key, ids["tax"].certificate.read_bytes(), _statement(ids["hrss"], "tax", key).signature, LIST
    )
    with pytest.raises(CryptoError, match="not the one its certified key signed"):
        verify_statement(forged, JOB, trust.ca_cert, trust.crl)


def test_an_expired_certificate_is_refused(federation: tuple[psi_keys.Trust, dict[str, psi_keys.Identity]]) -> None:
    trust, ids = federation
    statement = _statement(ids["tax"], "tax", psi.agreement_public(psi.new_key()))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    with pytest.raises(CryptoError, match="certificate expired"):
        verify_statement(statement, JOB, trust.ca_cert, None, now=later)


def test_signing_with_a_key_the_certificate_does_not_certify_is_refused(
    federation: tuple[psi_keys.Trust, dict[str, psi_keys.Identity]],
) -> None:
    _, ids = federation
    with pytest.raises(CryptoError, match="certifies another key"):
        sign_statement(
            load_private_key(ids["hrss"].key), ids["tax"].certificate.read_bytes(), JOB, "tax", b"k" * 32, LIST
        )


def test_the_signed_message_is_injective_in_its_fields() -> None:
    """Length prefixes: moving bytes between job id and agency changes what is signed."""
    assert signed_message("ab", "c", b"k", LIST) != signed_message("a", "bc", b"k", LIST)
    assert signed_message("a", "b", b"kk", LIST) != signed_message("a", "bk", b"k", LIST)
    assert signed_message("a", "b", b"k", b"ll") != signed_message("a", "b", b"kl", b"l")


def test_the_listing_names_each_agency_once_and_the_label_holder_as_the_job_does() -> None:
    keys = [KeyStatement(a, bytes([i]) * 32, b"", b"", LIST) for i, a in enumerate(["tax", "hrss"])]
    assert psi_keys.peer_keys(JOB, keys, "civil", None, 2) == [b"\x00" * 32, b"\x01" * 32]
    with pytest.raises(ValueError, match="listed an agency's agreement key twice"):
        psi_keys.peer_keys(JOB, [keys[0], keys[0]], "civil", None, 2)
    with pytest.raises(ValueError, match="listed the label holder 'tax' among the other nodes"):
        psi_keys.peer_keys(JOB, keys, "tax", None, 2)
    with pytest.raises(ValueError, match="listed 1 other nodes, the job needs at least 2"):
        psi_keys.peer_keys(JOB, keys[:1], "civil", None, 2)
    assert psi_keys.label_key(JOB, keys[:1], "tax", None) == b"\x00" * 32
    with pytest.raises(ValueError, match="listed \\['hrss'\\] as the label holder, the job names 'tax'"):
        psi_keys.label_key(JOB, keys[1:], "tax", None)
    with pytest.raises(ValueError, match="as the label holder"):
        psi_keys.label_key(JOB, keys, "tax", None)


def test_with_the_ca_an_unsigned_roster_is_refused(
    federation: tuple[psi_keys.Trust, dict[str, psi_keys.Identity]],
) -> None:
    trust, _ = federation
    with pytest.raises(CryptoError, match="agency 'tax' sent its agreement key unsigned"):
        psi_keys.peer_keys(JOB, [KeyStatement("tax", b"\x00" * 32, b"", b"", LIST)], "civil", trust, 1)


@pytest.mark.parametrize(
    "cfg",
    [
        {"agencies": ["tax"], "agree": [b"k"], "agree_cert": [b""], "agree_sig": [b""]},  # a column missing
        {"agencies": ["tax"], "agree": [b"k", b"l"], "agree_cert": [b""], "agree_sig": [b""], "agree_list": [b""]},
        {"agencies": [1], "agree": [b"k"], "agree_cert": [b""], "agree_sig": [b""], "agree_list": [b""]},
        {"agencies": ["tax"], "agree": ["k"], "agree_cert": [b""], "agree_sig": [b""], "agree_list": [b""]},
        {"agencies": ["tax"], "agree": [b"k"], "agree_cert": [b""], "agree_sig": [b""], "agree_list": ["l"]},
        {"agencies": "tax", "agree": b"k", "agree_cert": b"", "agree_sig": b"", "agree_list": b""},  # not lists
    ],
)
def test_a_malformed_relayed_roster_is_refused(cfg: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="malformed list of agreement keys"):
        psi_keys.relayed(cfg)


def test_node_config_carries_the_identity_and_the_ca(tmp_path: Path) -> None:
    nc = NodeConfig(
        tmp_path / "s.db", "tax", tmp_path / "l.db", None, None,
        identity_key=tmp_path / "k", identity_cert=tmp_path / "c", ca_cert=tmp_path / "ca", crl=tmp_path / "crl",
    )  # fmt: skip
    parsed = node_config(dict(p.split("=", 1) for p in node_config_arg(nc).replace("'", "").split(" ")))
    assert parsed == nc
    assert psi_keys.identity_of(parsed) == psi_keys.Identity(tmp_path / "k", tmp_path / "c")
    assert psi_keys.trust_of(parsed) == psi_keys.Trust(tmp_path / "ca", tmp_path / "crl")
    bare = NodeConfig(tmp_path / "s.db", "tax", tmp_path / "l.db", None, None)
    assert psi_keys.identity_of(bare) is None and psi_keys.trust_of(bare) is None


def test_an_identity_key_without_its_certificate_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both identity_key and identity_cert"):
        node_config({"store": "s", "agency": "tax", "ledger": "l", "identity_key": str(tmp_path / "k")})


@pytest.mark.parametrize("extra", [{"identity_key": "k", "identity_cert": "c"}, {"crl": "crl.pem"}])
def test_signing_or_a_crl_without_the_ca_is_a_config_error(extra: dict[str, str]) -> None:
    """A node that signs its key but checks nobody's, or holds a CRL it checks nothing against."""
    with pytest.raises(ConfigError, match="without ca_cert"):
        node_config({"store": "s", "agency": "tax", "ledger": "l", **extra})


def test_a_certificate_of_another_kind_is_refused(tmp_path: Path) -> None:
    """The agency's own node (gRPC) certificate is not its SuperNode's: the kind is checked too."""
    trust, _ = federation_pki(tmp_path, [])
    issued = pki.issue(tmp_path / "ca", "node", "tax", tmp_path / "node")
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), password=None)
    statement = sign_statement(key, issued.cert_path.read_bytes(), JOB, "tax", b"\x07" * 32, LIST)  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="certificate that fails"):
        verify_statement(statement, JOB, trust.ca_cert, trust.crl)


def test_revocation_is_checked_against_the_ca_s_crl(tmp_path: Path) -> None:
    trust, ids = federation_pki(tmp_path, ["tax"])
    statement = _statement(ids["tax"], "tax", psi.agreement_public(psi.new_key()))
    verify_statement(statement, JOB, trust.ca_cert, trust.crl)
    pki.revoke(tmp_path / "ca", load_cert(ids["tax"].certificate).serial_number)
    with pytest.raises(CryptoError, match="certificate revoked"):
        verify_statement(statement, JOB, trust.ca_cert, trust.crl)


def test_aligned_rows_verify_only_as_signed_for_this_run(
    federation: tuple[psi_keys.Trust, dict[str, psi_keys.Identity]],
) -> None:
    """A node's `partners` signature covers the aligned rows it was asked about, its answer, the
    job, the run and its agency; a change to any of them is refused."""
    _, ids = federation
    aligned, rows = psi.rows_to_bytes([3, 1, 4]), psi.rows_to_bytes([0, 2, 5])
    signature = psi_keys.rows_signature(JOB, 7, "tax", aligned, rows, ids["tax"])
    certificate = ids["tax"].certificate.read_bytes()
    verify_rows(certificate, signature, JOB, 7, "tax", aligned, rows)
    for change in (
        {"aligned": psi.rows_to_bytes([3, 1, 5])},
        {"rows": psi.rows_to_bytes([0, 2, 6])},
        {"run_id": 8},
        {"job_id": "job-8"},
        {"agency": "hrss"},
    ):
        args = {"job_id": JOB, "run_id": 7, "agency": "tax", "aligned": aligned, "rows": rows, **change}
        with pytest.raises(CryptoError, match="did not sign these aligned subjects"):
            verify_rows(certificate, signature, **args)  # type: ignore[arg-type]
    assert psi_keys.rows_signature(JOB, 7, "tax", aligned, rows, None) == b""  # nothing to sign with
