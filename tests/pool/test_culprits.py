"""Fingerprints of requests that crashed a worker (``warren/pool/culprits.py``)."""

from __future__ import annotations

import pytest

from warren.errors import RequestRefused
from warren.params import GenerationParams
from warren.pool.culprits import Culprits, fingerprints


def test_the_full_fingerprint_ignores_only_the_seed() -> None:
    base = GenerationParams(prompt="x", seed=1)
    assert fingerprints(base) == fingerprints(GenerationParams(prompt="x", seed=2))
    assert fingerprints(base) != fingerprints(GenerationParams(prompt="y", seed=1))
    assert len(fingerprints(base)) == 1


def test_a_constraint_fingerprint_only_when_something_reaches_the_sampler() -> None:
    assert len(fingerprints(GenerationParams(prompt="x", stop=("\n",)))) == 1  # stop strings alone: no
    for extra in ({"grammar": 'root ::= "a"'}, {"json_schema": '{"type": "object"}'},
                  {"banned_strings": ("a",)}, {"logit_bias": {5: -100.0}}):
        one = fingerprints(GenerationParams(prompt="x", **extra))  # type: ignore[arg-type]
        other = fingerprints(GenerationParams(prompt="a different prompt", **extra))  # type: ignore[arg-type]
        assert len(one) == 2 and one[1] == other[1] and one[0] != other[0]


def test_charged_requests_are_refused_per_model_and_forgotten_on_request() -> None:
    culprits = Culprits()
    bad = GenerationParams(prompt="x", grammar='root ::= "a"')
    culprits.check("m", bad)  # nothing charged yet
    culprits.charge("m", bad, "killed by SIGABRT")
    with pytest.raises(RequestRefused, match="killed by SIGABRT"):
        culprits.check("m", GenerationParams(prompt="other", grammar='root ::= "a"'))
    culprits.check("other-model", bad)
    culprits.check("m", GenerationParams(prompt="x"))
    assert culprits.count("m") == 2
    culprits.forget("m")
    culprits.check("m", bad)
    assert culprits.count("m") == 0


def test_the_memory_is_bounded_oldest_first() -> None:
    culprits = Culprits(limit=4)
    for i in range(4):
        culprits.charge("m", GenerationParams(prompt=str(i)), "crash")
    culprits.charge("n", GenerationParams(prompt="new"), "crash")
    culprits.check("m", GenerationParams(prompt="0"))  # the oldest went
    with pytest.raises(RequestRefused):
        culprits.check("m", GenerationParams(prompt="1"))
    assert culprits.count("m") == 3 and culprits.count("n") == 1
