"""The vertical ServerApp over the nodes' real ClientApp handlers (tests/clientapp_relay.py), with
one node's reply stripped of a field: the job fails naming that node's agency, as every other
malformed reply does, instead of a bare KeyError (`server_error` with no agency; found by review)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from federated import psi
from federated import vertical_server as server
from tests.clientapp_relay import NodeIds, federation, handler_exchange
from xgate.errors import VerticalFailed

EVERYONE = [f"pseudonym{i:05d}" for i in range(120)]
SETS = {"civil": EVERYONE[:100], "tax": EVERYONE[20:], "hrss": EVERYONE[10:110]}


def _strip(reply: Message, request: Message, is_array: bool, field: str) -> Message:
    """The reply without `field`: a config value, or the reply's arrays (each strip here names the
    one array such a reply carries)."""
    cfg = {k: v for k, v in reply.content["cfg"].items() if is_array or k != field}
    record = RecordDict({"cfg": ConfigRecord(cfg)})
    if not is_array and "arrays" in reply.content.array_records:
        record["arrays"] = reply.content.array_records["arrays"]
    return Message(record, reply_to=request)


@pytest.mark.parametrize(
    ("kind", "agency", "is_array", "field"),
    [
        ("train.step", "tax", True, "emb"),  # a feature node's embeddings
        ("train.top", "civil", False, "loss"),  # the label holder's loss
        ("evaluate.top", "civil", False, "auc"),
        ("query.hello", "hrss", False, "features"),
    ],
)
def test_a_reply_without_a_field_fails_the_job_naming_its_agency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, agency: str, is_array: bool, field: str
) -> None:
    fed = federation(tmp_path, SETS)
    relay = fed.relay

    def edit(message_type: str, replier: str, request: Message, reply: Message) -> Message:
        return _strip(reply, request, is_array, field) if (message_type, replier) == (kind, agency) else reply

    exchange = handler_exchange(relay, edit)
    monkeypatch.setattr(server, "exchange", exchange)
    job_dir = tmp_path / "server"
    job_dir.mkdir()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = relay.run_id, 0, 1
    with pytest.raises(VerticalFailed) as failed:
        context = Context(1, 0, {}, RecordDict(), {"nodes": 3})
        server.run_vertical(NodeIds(sorted(relay.configs)), context, relay.job, job_dir)  # type: ignore[arg-type]
    assert failed.value.agency == agency and field in failed.value.message
    events = [json.loads(line) for line in (job_dir / "server-events.jsonl").read_text().splitlines()]
    assert [e["agency"] for e in events if e["event"] == "job_failed"] == [agency]


def _flip_top_bit(tags: bytes) -> bytes:
    """The first tag twice, the copy with bit 255 set: X25519 ignores that bit, so both name one point."""
    first = bytearray(tags[: psi.TAG_BYTES])
    first[-1] |= 0x80
    return tags + bytes(first)


@pytest.mark.parametrize(
    "bad",
    [
        _flip_top_bit,
        lambda tags: tags + bytes(psi.TAG_BYTES),  # the zero point: X25519 refuses it
        lambda tags: tags + (2**255 - 19 + 3).to_bytes(psi.TAG_BYTES, "little"),  # u = 3, not reduced
    ],
)
def test_a_hello_list_no_honest_blinding_makes_fails_naming_its_sender(tmp_path: Path, bad: Any) -> None:
    """Found by review: a repeated point written two ways passed the byte comparison, and the zero
    point failed at the label holder's blinding, so the job named the label holder."""
    fed = federation(tmp_path, SETS)

    def reply(kind: str, agency: str, cfg: dict[str, Any]) -> dict[str, Any]:
        return {**cfg, "tags": bad(cfg["tags"])} if kind == "query.hello" and agency == "tax" else cfg

    fed.relay.on_reply = reply
    with pytest.raises(VerticalFailed) as failed:
        fed.align()
    assert failed.value.agency == "tax" and "not a point X25519 outputs" in failed.value.message


def test_every_tag_honest_blinding_makes_passes_the_check() -> None:
    psi.check_tags(psi.first_tags(psi.new_key(), "job", [f"p{i}" for i in range(2000)]))
