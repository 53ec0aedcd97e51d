"""A coordinator colluding with one node names rows outside the intersection as aligned, so that
the label holder translates them and the node learns which of its subjects the label holder holds;
tried against the nodes' real ClientApp handlers (tests/clientapp_relay.py).

Found by review: at `align` the label holder checked only that each node's list of positions was as
long as the aligned rows. Now every node signs, with its certified SuperNode key, the aligned rows it
was asked about and its answer (`partners`), and the label holder translates only rows every other
node signed (`psi_keys.check_partners`). An honest node signs only rows it holds, so rows outside the
intersection get no signature from a node that misses them. The positive control runs the attack in
a federation without the CA (nothing signed): the colluders read every such subject.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federated import psi, psi_keys
from federated import vertical_server as server
from tests.clientapp_relay import Federation, federation
from xgate.errors import VerticalFailed

EVERYONE = [f"pseudonym{i:05d}" for i in range(120)]
SETS = {"civil": EVERYONE[:100], "tax": EVERYONE[20:], "hrss": EVERYONE[10:80]}
# Held by the label holder (civil) and tax but not hrss: outside the intersection, 20 subjects.
OUTSIDE = set(SETS["civil"]) & set(SETS["tax"]) - set(SETS["hrss"])


def _through_membership(fed: Federation) -> list[int]:
    """The ServerApp's PSI up to the membership sum: the aligned rows (label holder positions)."""
    relay, label = fed.relay, fed.node_of["civil"]
    parts = sorted(relay.configs)
    hello = relay.hello()
    first = {n: server._tags(relay, n, server.cfg_of(hello[n]).get("tags"), psi.TAG_BYTES) for n in parts}  # type: ignore[arg-type]
    agree = {n: server._agreement_key(relay, n, server.cfg_of(hello[n]), first[n]) for n in parts}  # type: ignore[arg-type]
    others = [n for n in parts if n != label]
    returned, seeds, _ = server._blind(relay, first, agree, label, others)  # type: ignore[arg-type]
    aligned, _ = server._membership(relay, returned, seeds, agree, label, others, psi.count(first[label]))  # type: ignore[arg-type]
    return aligned


def _collude(fed: Federation) -> set[str]:
    """tax hands the coordinator its matches and signs whatever it is asked; the coordinator asks
    the label holder to translate the rows tax holds outside the intersection. Returns the
    pseudonyms tax learns the label holder holds."""
    relay, job_id = fed.relay, fed.job.job_id
    aligned = _through_membership(fed)
    tax = fed.node_of["tax"]
    cache = fed.relay.configs[tax].ledger.parent / "fl-cache" / job_id / f"run-{relay.run_id}"
    matched = np.load(cache / "psi-matches.npy")
    extra = [int(r) for r in np.flatnonzero(matched >= 0) if int(r) not in set(aligned)]
    asked = psi.rows_to_bytes(extra)
    tax_rows = psi.rows_to_bytes([int(matched[r]) for r in extra])
    filler = psi.rows_to_bytes(range(len(extra)))  # hrss holds none of them: any distinct positions
    identity = psi_keys.identity_of(fed.relay.configs[tax])
    signatures = [
        psi_keys.rows_signature(job_id, relay.run_id, "tax", asked, tax_rows, identity),
        b"",  # hrss signs only rows it holds: there is no signature of hrss to be had
    ]
    request = {"aligned": asked, "partners": [tax_rows, filler], "partner_sigs": signatures}
    reply = server.cfg_of(relay.send("train.align", {fed.node_of["civil"]: (request, {})})[fed.node_of["civil"]])
    own = psi.rows_from_bytes(reply["partners"][0], len(SETS["tax"]))
    order = (cache / "psi-order.txt").read_text().split("\n")
    return {order[r] for r in own}


def test_positive_control_unsigned_the_colluders_read_which_of_taxs_subjects_the_label_holder_holds(
    tmp_path: Path,
) -> None:
    fed = federation(tmp_path, SETS, ca=False)
    assert _collude(fed) == OUTSIDE and len(OUTSIDE) == 20


def test_the_label_holder_translates_only_rows_every_other_node_signed(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)
    with pytest.raises(VerticalFailed) as failed:
        _collude(fed)
    assert failed.value.agency == "civil"
    assert "agency 'hrss' did not sign these aligned subjects and positions for this run" in failed.value.message


def test_an_honest_alignment_carries_every_nodes_signature_and_completes(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)
    alignment, train, test = fed.align()
    assert len(alignment.label_rows) == len(set(SETS["civil"]) & set(SETS["tax"]) & set(SETS["hrss"]))
    assert sorted(alignment.signatures) == sorted(n for a, n in fed.node_of.items() if a != "civil")
    assert all(alignment.signatures.values()) and sorted(train + test) == alignment.label_rows
