"""Requests that crashed a worker: their fingerprints, so the same request is refused next time.

Grammars and schemas are checked before llama.cpp sees them (``warren/grammar``), but should a
request still crash a worker, two things follow. The crash is charged to the request, not to the model:
it does not count toward the model's crash-loop quarantine (quarantine is for models that fail without
a hostile request). And the request is remembered, because clients retry on a 502: the same content
again gets ``RequestRefused`` (400) instead of another crash and reload for everyone.

A request has up to two fingerprints (sha256):
- ``full``: everything the worker was given except the seed (a retry usually draws a new one);
- ``constraint``: what reaches llama.cpp's sampler besides the prompt — grammar, JSON schema, banned
  strings, logit bias — with the stop strings; only when one of the first four is set. Stop strings
  alone never reach llama.cpp, and many clients send the same ones with every request.

A request matching either is refused. The memory is per model, bounded (least recently charged
forgotten first), and an operator's explicit load of the model clears it.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

from warren.errors import RequestRefused
from warren.params import GenerationParams

CULPRITS_MAX = 1024  # fingerprints kept for all models together: 128 KiB, far more than honest crashes


def fingerprints(params: GenerationParams) -> tuple[str, ...]:
    full = params.as_wire()
    full.pop("seed", None)
    prints = [_digest({"full": full})]
    if params.grammar or params.json_schema or params.banned_strings or params.logit_bias:
        prints.append(_digest({"grammar": params.grammar, "json_schema": params.json_schema,
                               "banned_strings": list(params.banned_strings), "stop": list(params.stop),
                               "logit_bias": {str(k): v for k, v in params.logit_bias.items()}}))
    return tuple(prints)


def _digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class Culprits:
    """Fingerprints of requests that crashed a model's worker, with the crash they caused."""

    def __init__(self, limit: int = CULPRITS_MAX) -> None:
        self.limit = limit
        self._charged: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._per_model: dict[str, int] = {}

    def charge(self, model: str, params: GenerationParams, crash: str) -> None:
        for fingerprint in fingerprints(params):
            key = (model, fingerprint)
            if key not in self._charged:
                self._per_model[model] = self._per_model.get(model, 0) + 1
            self._charged[key] = crash
            self._charged.move_to_end(key)
        while len(self._charged) > self.limit:
            (old_model, _), _ = self._charged.popitem(last=False)
            self._per_model[old_model] -= 1

    def check(self, model: str, params: GenerationParams) -> None:
        """Raise ``RequestRefused`` if this request (or its constraints) crashed ``model``'s worker before.
        Free when nothing was charged to the model: fingerprints are only computed then."""
        if not self._per_model.get(model):
            return
        for fingerprint in fingerprints(params):
            crash = self._charged.get((model, fingerprint))
            if crash is not None:
                raise RequestRefused(f"this request crashed the worker of model {model!r} before ({crash}); "
                                     "it is refused so that it cannot do so again",
                                     hint="change the grammar, schema, banned strings or logit bias; an operator's "
                                          f"POST /api/models/{model}/load clears this", model=model)

    def forget(self, model: str) -> None:
        for key in [k for k in self._charged if k[0] == model]:
            del self._charged[key]
        self._per_model.pop(model, None)

    def count(self, model: str) -> int:
        return self._per_model.get(model, 0)
