"""What an honest node answers to an EncryptRequest, for in-process fakes of the fan-out port.

Fresh ciphertexts per element and chunk, or, for a request naming a one-time pad batch, the
padded values of its window and (when it opens the batch) the pad ciphertexts, and the values'
tags when asked: the same steps as nodes/service.py, with one PadBook and one value-tag key per
agency as each node keeps them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from crypto.he import SLOTS, PublicContext, centered, chunks
from crypto.pads import padded
from crypto.value_tags import value_tags
from exchange.eligibility import echo_clamp, query_clamp
from nodes.pads import PadBook
from protos.xgate.v1 import node_pb2


class HonestAnswers:
    def __init__(self) -> None:
        self.books: dict[str, PadBook] = {}
        self.tag_keys: dict[str, bytes] = {}

    def answer(
        self,
        agency: str,
        request: node_pb2.EncryptRequest,
        values_of: Callable[[str], Sequence[int]],
        public_context: bytes = b"",
    ) -> node_pb2.EncryptResponse:
        """`values_of(element)`: the node's values for request.pseudonyms, in order."""
        response = node_pb2.EncryptResponse(agency=agency, request_id=request.context.request_id)
        context = PublicContext.cached(request.public_context or public_context)
        copies = max(1, request.replicas)
        window = None
        if request.pad_batch:
            book = self.books.setdefault(agency, PadBook())
            names = [q.element for q in request.elements]
            count = len(request.pseudonyms) * copies
            window = book.take(request.pad_batch, context.ref, names, request.pad_offset, count, open_=request.pad_open)
        for query in request.elements:
            stored = list(values_of(query.element))
            own = [query_clamp(query).apply(x) for x in stored]
            values = own * copies
            element = echo_clamp(response.elements.add(element=query.element), query)
            if request.HasField("value_tag_epoch"):
                # Per agency and fixed, as a node's key lives in its store: unchanged values, same tags.
                key = self.tag_keys.setdefault(agency, hashlib.sha256(f"tag-key:{agency}".encode()).digest())
                epoch, pseudonyms = request.value_tag_epoch, request.pseudonyms
                element.value_tags = value_tags(key, epoch, 0, query.element, pseudonyms, stored)
            if window is not None:
                element.padded_values.extend(padded(values, window.window(query.element)))
                if request.pad_open:
                    blob = context.encrypt(centered(window.full(query.element)))
                    element.pad_ciphertext = blob
                    element.pad_ciphertext_sha256 = hashlib.sha256(blob).digest()
                continue
            for chunk in chunks(values, SLOTS):
                blob = context.encrypt(chunk)
                element.ciphertexts.append(blob)
                element.ciphertext_sha256.append(hashlib.sha256(blob).digest())
        return response
