"""A coordinator passes a list of candidates off as a node's, to learn which of them the label
holder holds; tried against the label holder's real ClientApp handler (tests/clientapp_relay.py).

The label holder blinds, digests and shuffles every list it is sent at `train.blind`. A coordinator
that blinds each candidate with a scalar of its own, puts the list in a node's place and applies
each scalar to the label holder's hello list can match what comes back candidate by candidate: the
secret shuffle does not hide a match. Found by review: before, the only binding of a list to its
node was the sealed seed, which the node checks at `membership`, after the label holder answered.
Now each node's statement, signed with its certified SuperNode key, covers the digest of its hello
list (crypto/key_statements.py), and the label holder blinds only lists that match their statements
(`psi_keys.check_lists`). The positive control runs the same substitution in a federation without
the CA (nothing signed): the coordinator reads every candidate right.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from federated import psi, psi_keys
from tests.clientapp_relay import federation
from xgate.errors import VerticalFailed

EVERYONE = [f"pseudonym{i:05d}" for i in range(120)]
SETS = {"civil": EVERYONE[:100], "tax": EVERYONE[20:], "hrss": EVERYONE[10:110]}
CANDIDATES = EVERYONE[60:75] + EVERYONE[100:115] + ["outsider-a", "outsider-b"]  # 15 the label holder holds
Cfg = dict[str, Any]


class Substitution:
    """Puts the candidates, one fresh scalar each, in tax's place at the label holder's `blind`;
    `also_digest`: rewrites the relayed list digest to match (all a coordinator can do unsigned)."""

    def __init__(self, job_id: str, also_digest: bool) -> None:
        self.scalars = [psi.new_key() for _ in CANDIDATES]
        self.probe = b"".join(psi.blind(k, psi.hash_to_u(job_id, c)) for k, c in zip(self.scalars, CANDIDATES))
        self.also_digest = also_digest
        self.label_hello = b""
        self.returned: bytes | None = None

    def request(self, kind: str, agency: str, cfg: Cfg) -> Cfg:
        if kind == "train.blind" and agency == "civil":
            at = cfg["agencies"].index("tax")
            cfg = {**cfg, "tags": [self.probe if i == at else t for i, t in enumerate(cfg["tags"])]}
            if self.also_digest:
                digests = list(cfg["agree_list"])
                digests[at] = psi_keys.list_digest(self.probe)
                cfg["agree_list"] = digests
        return cfg

    def reply(self, kind: str, agency: str, cfg: Cfg) -> Cfg:
        if kind == "query.hello" and agency == "civil":
            self.label_hello = cfg["tags"]
        if kind == "train.blind" and agency == "civil":
            self.returned = cfg["matches"][0]
        return cfg

    def read(self) -> dict[str, bool]:
        """Per candidate: does the label holder hold it (its scalar applied to the label holder's list
        meets what came back)."""
        assert self.returned is not None, "the label holder blinded nothing for the coordinator"
        back = set(psi.split(self.returned, psi.MATCH_BYTES))
        return {
            c: bool(set(psi.split(psi.finish(k, self.label_hello), psi.MATCH_BYTES)) & back)
            for k, c in zip(self.scalars, CANDIDATES)
        }


def _attack(tmp_path: Path, ca: bool, also_digest: bool) -> tuple[Substitution, VerticalFailed | None]:
    fed = federation(tmp_path, SETS, ca=ca)
    coordinator = Substitution(fed.job.job_id, also_digest)
    fed.relay.on_request, fed.relay.on_reply = coordinator.request, coordinator.reply
    try:
        fed.align()
    except VerticalFailed as failed:
        return coordinator, failed
    return coordinator, None


def test_positive_control_unsigned_the_coordinator_reads_which_candidates_the_label_holder_holds(
    tmp_path: Path,
) -> None:
    coordinator, _ = _attack(tmp_path, ca=False, also_digest=True)
    assert coordinator.read() == {c: c in SETS["civil"] for c in CANDIDATES}


@pytest.mark.parametrize("also_digest", [False, True])
def test_the_label_holder_blinds_no_list_its_node_did_not_sign(tmp_path: Path, also_digest: bool) -> None:
    coordinator, failed = _attack(tmp_path, ca=True, also_digest=also_digest)
    assert coordinator.returned is None  # refused before any blinding
    assert failed is not None and failed.agency == "civil"
    if also_digest:  # the digest no longer matches what tax signed
        assert "agency 'tax''s agreement key or list is not the one its certified key signed" in failed.message
    else:
        assert "sent a list as agency 'tax''s that it did not send" in failed.message
