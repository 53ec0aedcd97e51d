"""Canaries: a distinctive income and national id never reach the gateway in any form.

The federation here runs without TLS so that a recording proxy sees the protocol bytes the
gateway receives and sends (with TLS it would see only TLS records, which proves nothing).
A plaintext-mode run through the same proxies is the positive control: there the canary
income must show up, so the detector demonstrably works.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from app.devfed import DEV_APPROVAL_REF, LEGAL_BASIS, prepare, start_gateway, start_nodes, write_gateway_config
from app.launcher import Supervisor
from client.sdk import GatewayClient
from client.subjects import read_subjects
from tests.integration.recording_proxy import RecordingProxy
from xgate.pseudonym import Pseudonymiser, id_checksum, load_key

pytestmark = pytest.mark.integration

# Four canary people, adjacent in the request: in the plaintext baseline their values travel as
# adjacent packed zigzag varints, an 8-byte needle that random ciphertext bytes won't match by chance.
# Their incomes lie below the 低保 line: one above it is clamped to 1,101 at the node (docs/PROTOCOL.md
# "Masks") and would never travel in either mode, which would make the test prove nothing.
CANARIES = [
    ("65290119491231977", 1_087),
    ("65290119491231985", 1_093),
    ("65290119491231993", 1_061),
    ("65290119491231969", 1_019),
]
CANARY_IDS = [body + id_checksum(body) for body, _ in CANARIES]
CANARY_INCOMES = [income for _, income in CANARIES]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _income_forms() -> dict[str, bytes]:
    """The incomes as the plaintext baseline carries them (a 4-digit number alone, in decimal or
    as an integer, is no needle: timings and sizes in the gateway's own logs can match it)."""
    return {"packed-zigzag-run": b"".join(_varint(v << 1) for v in CANARY_INCOMES)}


def _id_forms() -> dict[str, bytes]:
    forms = {}
    for i, national_id in enumerate(CANARY_IDS):
        forms[f"ascii-{i}"] = national_id.encode()
        forms[f"utf16-{i}"] = national_id.encode("utf-16-le")
    return forms


def _plant(data_dir: Path) -> None:
    with (data_dir / "tax.csv").open("a", newline="") as handle:
        for national_id, income in zip(CANARY_IDS, CANARY_INCOMES, strict=True):
            csv.writer(handle).writerow([national_id, income, income, 0])
    with (data_dir / "applicants.csv").open("a", newline="") as handle:
        for national_id in CANARY_IDS:
            csv.writer(handle).writerow([national_id])


def _gateway_bytes_at_rest(gateway_dir: Path, log_file: Path) -> bytes:
    blobs = [p.read_bytes() for p in gateway_dir.rglob("*") if p.is_file()]
    return b"".join(blobs) + log_file.read_bytes()


@pytest.fixture(scope="module")
def canary_federation(tmp_path_factory):
    fed = prepare(
        tmp_path_factory.mktemp("canary"),
        people=1500,
        applicants=50,
        tls=False,
        plaintext_baseline=True,
        edit_data=_plant,
    )
    proxies: list[RecordingProxy] = []
    with Supervisor(log_dir=fed.log_dir) as supervisor:
        start_nodes(fed, supervisor)
        node_proxies = {a: RecordingProxy(p) for a, p in fed.node_ports.items()}
        proxies += node_proxies.values()
        write_gateway_config(fed, {a: f"127.0.0.1:{px.port}" for a, px in node_proxies.items()})
        url = start_gateway(fed, supervisor)
        front = RecordingProxy(int(url.rsplit(":", 1)[1]))
        proxies.append(front)
        fed.front_url = f"http://127.0.0.1:{front.port}"  # type: ignore[attr-defined]
        fed.proxies = proxies  # type: ignore[attr-defined]
        yield fed
    for proxy in proxies:
        proxy.close()


def _run(fed, mode: str) -> bytes:
    """Run one check; return only the bytes the proxies recorded during it."""
    before = [len(p.snapshot()) for p in fed.proxies]
    ids = read_subjects(fed.applicants)
    assert ids[-len(CANARY_IDS) :] == CANARY_IDS
    with GatewayClient(
        fed.front_url, fed.api_keys["caseworker"], Pseudonymiser(load_key(fed.pseudonym_key)),
        signer=fed.signer("caseworker"), identity=fed.identity("caseworker"),
    ) as client:  # fmt: skip
        result = client.check(
            "dibao", ids, "dibao", LEGAL_BASIS["dibao"], f"canary-{mode}", approval_ref=DEV_APPROVAL_REF, mode=mode
        )
    assert result.passes["income_within_threshold"][-len(CANARY_IDS) :].all()
    wire = b"".join(p.snapshot()[start:] for p, start in zip(fed.proxies, before, strict=True))
    assert len(wire) > 100_000 if mode == "he" else len(wire) > 1000
    return wire


def test_he_mode_gateway_never_sees_canaries(canary_federation):
    wire = _run(canary_federation, "he")
    stored = _gateway_bytes_at_rest(canary_federation.gateway_dir, canary_federation.log_dir / "gateway.log")
    for where, blob in (("wire", wire), ("gateway files and logs", stored)):
        for form, needle in {**_income_forms(), **_id_forms()}.items():
            assert needle not in blob, f"canary ({form}) found in {where}"


def test_positive_control_plaintext_mode_exposes_the_income(canary_federation):
    """Today's practice (raw values to the gateway) is caught by the same detector."""
    wire = _run(canary_federation, "plaintext")
    assert _income_forms()["packed-zigzag-run"] in wire
    # ids never travel in either mode: the client sends pseudonyms only
    assert all(needle not in wire for needle in _id_forms().values())
