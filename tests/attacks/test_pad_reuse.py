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
from tests.unit.test_node_service import SUBJECTS, _request, _store
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


def _best_threshold_accuracy(y: np.ndarray, truth: np.ndarray) -> float:
    """A threshold on y at every percentile, either way round, chosen on the first half and scored
    on the second: what a curious gateway gets from padded values alone."""
    half = len(y) // 2
    best = max(
        (float(np.mean((y[:half] > cut) == (truth[:half] if up else ~truth[:half]))), cut, up)
        for cut in np.quantile(y[:half], np.linspace(0.01, 0.99, 99))
        for up in (True, False)
    )
    _, cut, up = best
    return float(np.mean((y[half:] > cut) == (truth[half:] if up else ~truth[half:])))


def _padded_incomes(node: NodeService, public_context: Any, rich: np.ndarray) -> np.ndarray:
    """The node's answers, slot after slot of one batch, for a poor (500) or a rich (2,000) applicant."""
    batch, out = new_batch_id(), []
    for slot, is_rich in enumerate(rich):
        subject = SUBJECTS[4] if is_rich else SUBJECTS[1]  # the stored incomes are 500 * i
        answer = node.encrypt_values(_padded_request(public_context, subject, batch, slot, slot == 0))
        out.append(_padded_value(answer) % PLAIN_MODULUS)
    return np.asarray(out, dtype=np.float64)


def test_padded_values_tell_a_poor_from_a_rich_applicant_no_better_than_chance(public_context: Any) -> None:
    """4,000 answers of the real node, each from its own pad slot. Chance is 0.5; 4 sigma over the
    2,000 scored answers is 0.045 (a false alarm about once in 16,000 runs: the pads are fresh)."""
    rich = np.random.default_rng(7).integers(0, 2, 4000).astype(bool)
    node = NodeService(agency="tax", store=_store())  # type: ignore[arg-type]
    accuracy = _best_threshold_accuracy(_padded_incomes(node, public_context, rich), rich)
    assert abs(accuracy - 0.5) <= 4 * 0.5 / np.sqrt(2000), accuracy


def test_positive_control_pads_from_a_small_range_give_the_income_away(public_context: Any) -> None:
    """The same attack against a node whose pads are narrow (2^10 instead of the whole ring):
    x - rho then still sorts poor below rich, and the threshold finds them."""

    class NarrowBook(PadBook):
        def take(
            self, batch_id: bytes, context_ref: str, elements: Any, start: int, count: int, *, open_: bool
        ) -> PadWindow:
            window = super().take(batch_id, context_ref, elements, start, count, open_=open_)
            return NarrowWindow(window.seed, window.start, window.count)

    class NarrowWindow(PadWindow):
        def full(self, element: str) -> np.ndarray:
            return super().full(element) % np.uint64(1 << 10)

        def window(self, element: str) -> np.ndarray:
            return self.full(element)[self.start : self.start + self.count]

    rich = np.random.default_rng(7).integers(0, 2, 600).astype(bool)
    node = NodeService(agency="tax", store=_store(), pads=NarrowBook())  # type: ignore[arg-type]
    y = _padded_incomes(node, public_context, rich)
    y = np.where(y > PLAIN_MODULUS / 2, y - PLAIN_MODULUS, y)  # centred, as the gateway reads them
    assert _best_threshold_accuracy(y, rich) > 0.95
