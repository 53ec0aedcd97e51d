"""Attack: a curious gateway reads values through the one-time pads of small checks.

A small packed check gets x - rho mod t from each node for its window of a pad batch, and adds
the batch's Enc(rho), which the node sent once (docs/PROTOCOL.md "Pads"). The gateway holds
every padded value it ever received. If one pad slot answered for two people, their difference
would come out: (x_A - rho) - (x_B - rho) = x_A - x_B; one person known (a colleague, a test
subject), the other's value follows. The node answers each slot of a batch once, whoever asks
(nodes/pads.py), and knows no batch it did not open in this process (a restarted node cannot be
made to draw an old batch's pads again). With each pad used once, the padded values of a poor
and a rich applicant are indistinguishable (measured below: chance).

Real NodeService (the node's transport-free handler, its PadBook and pads), real HE context.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from crypto.he import PLAIN_MODULUS
from crypto.pads import new_batch_id
from nodes.pads import PadBook, PadWindow
from nodes.service import NodeService
from protos.xgate.v1 import node_pb2
from tests.unit.test_node_service import INCOME, SUBJECTS, _request, _store
from xgate.errors import InvalidInput, PadUnknown


def _padded_request(
    public_context: Any, subject: str, batch: bytes, offset: int, open_: bool
) -> node_pb2.EncryptRequest:
    request = _request([subject], mode=node_pb2.EXCHANGE_MODE_HE, public_context=public_context.data)
    request.pad_batch, request.pad_offset, request.pad_open = batch, offset, open_
    return request


def _padded_value(response: node_pb2.EncryptResponse) -> int:
    [element] = response.elements
    [value] = element.padded_values
    return value


class ForgetfulBook(PadBook):
    """The positive control: a book that does not remember which slots it answered."""

    def take(
        self, batch_id: bytes, context_ref: str, elements: Any, start: int, count: int, *, open_: bool
    ) -> PadWindow:
        window = super().take(batch_id, context_ref, elements, start, count, open_=open_)
        self._batches[batch_id].used.clear()
        return window


def test_a_gateway_asking_one_pad_slot_for_two_people_is_refused(public_context: Any) -> None:
    node = NodeService(agency="tax", store=_store())  # type: ignore[arg-type]
    batch = new_batch_id()
    node.encrypt_values(_padded_request(public_context, SUBJECTS[1], batch, 0, True))
    with pytest.raises(InvalidInput, match="each pad slot is used once"):
        node.encrypt_values(_padded_request(public_context, SUBJECTS[3], batch, 0, False))
    # The next free slot is answered as usual.
    assert node.encrypt_values(_padded_request(public_context, SUBJECTS[3], batch, 1, False)).elements


def test_positive_control_a_reused_pad_gives_the_difference_away(public_context: Any) -> None:
    node = NodeService(agency="tax", store=_store(), pads=ForgetfulBook())  # type: ignore[arg-type]
    batch = new_batch_id()
    y_a = _padded_value(node.encrypt_values(_padded_request(public_context, SUBJECTS[1], batch, 0, True)))
    y_b = _padded_value(node.encrypt_values(_padded_request(public_context, SUBJECTS[3], batch, 0, False)))
    assert (y_b - y_a) % PLAIN_MODULUS == 1500 - 500  # the stored incomes are 500 * i


def test_a_restarted_node_does_not_answer_for_a_batch_it_did_not_open(public_context: Any) -> None:
    batch = new_batch_id()
    NodeService(agency="tax", store=_store()).encrypt_values(  # type: ignore[arg-type]
        _padded_request(public_context, SUBJECTS[1], batch, 0, True)
    )
    restarted = NodeService(agency="tax", store=_store())  # type: ignore[arg-type]
    with pytest.raises(PadUnknown, match="open a new one"):
        restarted.encrypt_values(_padded_request(public_context, SUBJECTS[3], batch, 1, False))


def test_padded_values_tell_a_poor_from_a_rich_applicant_no_better_than_chance() -> None:
    """The gateway's best guess from y alone, over 4,000 fresh pad slots (the node's own pads):
    a threshold on y at every quantile, scored on held-out draws. Chance is 0.5 (3 sigma: 0.034)."""
    book, rng = PadBook(), np.random.default_rng(7)
    ref = "sha256:" + "00" * 32
    samples, labels = [], []
    for i in range(4000):
        rich = bool(rng.integers(2))
        window = book.take(new_batch_id(), ref, [INCOME], 0, 1, open_=True)
        x = 60_000 if rich else 300
        samples.append((x - int(window.window(INCOME)[0])) % PLAIN_MODULUS)
        labels.append(rich)
        if len(book) > 1000:
            book = PadBook()
    y, truth = np.asarray(samples, dtype=np.float64), np.asarray(labels)
    train, test = slice(0, 2000), slice(2000, 4000)
    best_cut, best_score = 0.0, 0.0
    for cut in np.quantile(y[train], np.linspace(0.01, 0.99, 99)):
        for sign in (True, False):
            score = float(np.mean((y[train] > cut) == (truth[train] if sign else ~truth[train])))
            if score > best_score:
                best_cut, best_score, best_sign = cut, score, sign
    accuracy = float(np.mean((y[test] > best_cut) == (truth[test] if best_sign else ~truth[test])))
    assert abs(accuracy - 0.5) <= 3 * 0.5 / np.sqrt(2000), accuracy
