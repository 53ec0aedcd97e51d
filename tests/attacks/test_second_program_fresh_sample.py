"""Attack (issue 13, item 4): ask the same question through a second program for a fresh mask.

dibao and target_discovery both compare income + pension + benefits with 1,100 CNY and both read
the household register. With masks keyed to the program, each program drew independent masks,
so asking through both gave two samples of r*d + s' and the magnitude leakage added up. Masks are
now keyed to the question (terms, defaults, direction, threshold), so the second program's masked
values are identical: the attacker learns nothing new. The loader refuses two programs that ask
the same question with different epochs (which would draw fresh masks at different times).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crypto.value_tags import tag_table
from exchange.eligibility import combine_he
from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, ProgramRegistry
from xgate.errors import ConfigError

CATALOGUE = load_catalogue()[0]
REGISTRY = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, CATALOGUE)
KEY = b"\x05" * 32


def _values(program, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for term in program.elements():
        element = CATALOGUE.get(term.element)
        out[term.element] = rng.integers(element.min, min(element.max, 5000) + 1, n)
    return out


def test_same_question_through_two_programs_gives_the_same_masked_values(requester_keys, public_context):
    dibao, discovery = REGISTRY.get("dibao"), REGISTRY.get("target_discovery")
    n = 40
    rng = np.random.default_rng(7)
    values = _values(dibao, n, rng) | _values(discovery, n, rng)
    cts = {e: [public_context.load(public_context.encrypt(v.tolist()), n)] for e, v in values.items()}
    ps = ["".join("abcdefghij"[int(c)] for c in f"{i:026d}") for i in range(n)]
    tags = tag_table(b"\x06" * 32, 9, values, ps)  # the nodes' tags: the same values for both programs

    def masked(program) -> dict[str, list[int]]:
        outcomes = combine_he(program, ps, public_context, cts, KEY, epoch=9, tags=tags)
        return {o.criterion: requester_keys.decrypt_masked(o.ciphertexts[0], n).tolist() for o in outcomes}

    a, b = masked(dibao), masked(discovery)
    assert a["income_within_threshold"] == b["income_within_threshold"]
    assert a["alive_and_resident"] == b["alive_and_resident"]
    # a different question is masked independently
    assert a["no_registered_business"] != b["not_enrolled"]
    # the ciphertexts differ (fresh randomness and flooding), the values do not
    assert (
        combine_he(dibao, ps, public_context, cts, KEY, 9, tags=tags)[0].ciphertexts
        != combine_he(discovery, ps, public_context, cts, KEY, 9, tags=tags)[0].ciphertexts
    )


def test_a_changed_threshold_is_another_question():
    income = REGISTRY.get("dibao").criteria[0]
    assert income.question == REGISTRY.get("target_discovery").criteria[0].question
    other = income.model_copy(update={"threshold": 1101})
    assert other.question != income.question


def test_two_programs_asking_one_question_must_share_the_epoch(tmp_path: Path):
    for path in DEFAULT_PROGRAM_DIR.glob("*.toml"):
        text = path.read_text()
        if path.stem == "target_discovery":
            text = text.replace("epoch_days = 30", "epoch_days = 7")
        (tmp_path / path.name).write_text(text)
    with pytest.raises(ConfigError, match="same question"):
        ProgramRegistry.load(tmp_path, CATALOGUE)
