"""The sampler chain of one request: KoboldCpp's samplers, in KoboldCpp's order, built from llama.cpp's C samplers.

Why a module of its own: the chain is where every sampling field of ``GenerationParams`` becomes behaviour, and
the engine's per-token loop must stay a few ctypes calls. Everything here runs once per request; per token only
llama.cpp's C code runs, except for the three samplers llama.cpp lacks (below).

Order. KoboldCpp applies its samplers in ``sampler_order`` (ids: 0 top_k, 1 top_a, 2 top_p, 3 tfs, 4 typical,
5 temperature, 6 rep_pen; default ``[6,0,1,3,4,2,5]``). An empty order is that default, which is also the order
warren always used. With an explicit order, as in KoboldCpp, a sampler whose id is absent is not applied. Around
the ordered ones: the logit biases (bans) come first; DRY goes with the repetition penalty (id 6), ``min_p`` right
after ``top_p`` (id 2), quadratic smoothing and XTC right before the temperature (id 5: XTC's threshold is
about the model's own probabilities, as in llama.cpp's order), top-n-sigma before all of them (it does not depend
on the temperature), the pick last. The repetition penalty and DRY are applied first wherever id 6 stands (they
belong with the logit biases, before a grammar); leaving id 6 out of an explicit order turns them off. Dynamic temperature (``dynatemp_range``) is llama.cpp's ``temp_ext``.

Greedy (temperature 0 or ``top_k`` 1) and Mirostat keep only the samplers that change which token wins: biases,
repetition penalty, DRY.

Samplers llama.cpp's C API does not have — ``top_a``, ``tfs``, quadratic smoothing, the repetition penalty's
``rep_pen_slope`` — are ``PySampler``s: a
Python callback over the candidates array (numpy on llama.cpp's memory). Each costs a little per token; the
figures are in ``docs/api-compat.md``. They are in the chain only when the request sets them.

The repetition penalty and DRY look back over the prompt too, as KoboldCpp's do: the last tokens of the prompt
(``history``) are fed to those two samplers before the chain is used.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any

import llama_cpp as L
import numpy as np

from warren.params import GenerationParams

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)
KOBOLD_ORDER = (6, 0, 1, 3, 4, 2, 5)  # KoboldCpp's default sampler_order
TOP_K, TOP_A, TOP_P, TFS, TYPICAL, TEMPERATURE, REP_PEN = range(7)

_alive: dict[int, list[Any]] = {}  # chain address -> the Python callbacks its PySamplers need while it lives


class PySampler:
    """A llama.cpp sampler whose ``apply`` is a Python function of the candidates (a numpy view of
    ``llama_token_data``, changed in place). The function returns a mask of the candidates to keep (they keep their
    order), or None to keep them all. The interface struct and callbacks must outlive the chain;
    ``build`` records them in ``_alive`` until ``free``."""

    def __init__(self, name: str, fn: Callable[[np.ndarray], np.ndarray | None],
                 accept: Callable[[int], None] | None = None) -> None:
        self.fn = fn
        self.name_bytes = name.encode()
        self.callbacks = (
            L.llama_sampler_i_name(lambda _s: self.name_bytes),
            L.llama_sampler_i_apply(self._apply),
            L.llama_sampler_i_accept(lambda _s, token: accept(int(token))) if accept else L.llama_sampler_i_accept(),
        )
        iface = L.llama_sampler_i()
        iface.name, iface.apply, iface.accept = self.callbacks
        self.iface = iface
        self.sampler = L.llama_sampler_init(ctypes.byref(iface), None)

    def _apply(self, _smpl: Any, cur_p: Any) -> None:
        arr = cur_p.contents
        n = int(arr.size)
        if n <= 1:
            return
        buf = (ctypes.c_char * (n * TOKEN_DATA.itemsize)).from_address(ctypes.cast(arr.data, ctypes.c_void_p).value)
        data = np.frombuffer(buf, dtype=TOKEN_DATA)
        keep = self.fn(data)
        if keep is None:  # the logits changed: their order may have too
            arr.sorted = False
            return
        kept = data[keep]
        if len(kept) and len(kept) < n:  # (the order is unchanged, so ``sorted`` stays what it was)
            data[: len(kept)] = kept
            arr.size, arr.selected = len(kept), -1


def _probs(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def top_a(a: float) -> Callable[[np.ndarray], np.ndarray | None]:
    """KoboldCpp's top-a: drop the tokens whose probability is below ``a`` × (the top probability)²."""
    def apply(data: np.ndarray) -> np.ndarray:
        p = _probs(data["logit"])
        top = p.max()
        return p >= a * top * top
    return apply


def tail_free(z: float) -> Callable[[np.ndarray], np.ndarray | None]:
    """Tail-free sampling (KoboldCpp's ``tfs``): cut where the normalised second derivative of the sorted
    probabilities has summed to ``z``."""
    def apply(data: np.ndarray) -> np.ndarray | None:
        p = _probs(data["logit"])
        ranked = np.sort(p)[::-1]
        if len(ranked) < 3:
            return None
        d2 = np.abs(np.diff(ranked, 2))
        total = d2.sum()
        if total <= 0:
            return None
        keep = int(np.count_nonzero(np.cumsum(d2 / total) <= z)) + 1
        return p >= ranked[keep - 1]
    return apply


def smoothing(factor: float, curve: float) -> Callable[[np.ndarray], np.ndarray | None]:
    """Quadratic (with ``curve`` ≠ 1 cubic) sampling, as KoboldCpp: each logit becomes
    ``max - k·f·d² + s·f·d³`` of its distance ``d`` to the top logit, ``k = (3 - curve)/2``, ``s = (curve - 1)/2``."""
    k, s = (3.0 - curve) / 2.0, (curve - 1.0) / 2.0
    def apply(data: np.ndarray) -> None:
        logits = data["logit"]
        top = logits.max()
        d = logits - top
        data["logit"] = top - k * factor * d * d + s * factor * d * d * d
    return apply


class SlopedPenalty:
    """KoboldCpp's repetition penalty with ``rep_pen_slope``: over the last ``rep_pen_range`` tokens, those in the
    newer half get ``rep_pen``, those only in the older half ``1 + (rep_pen - 1) * slope`` (a logit above 0 is
    divided by the penalty, one below multiplied). llama.cpp's penalty sampler has no slope; this one touches only
    the penalised tokens, so its cost is a Python call per token, not a pass over the vocabulary."""

    def __init__(self, penalty: float, last_n: int, slope: float) -> None:
        self.penalty, self.last_n = penalty, last_n
        self.reduced = 1.0 + (penalty - 1.0) * slope if penalty > 1.0 else penalty
        self.history: list[int] = []

    def accept(self, token: int) -> None:
        self.history.append(token)
        if len(self.history) > 2 * self.last_n:
            del self.history[: -self.last_n]

    def __call__(self, data: np.ndarray) -> None:
        recent = self.history[-self.last_n:] if self.last_n > 0 else []
        if not recent:
            return
        half = len(recent) // 2  # the older half: recent[:half] (KoboldCpp: i*2 < n)
        near = np.unique(np.asarray(recent[half:], dtype=np.int32))
        far = np.setdiff1d(np.asarray(recent[:half], dtype=np.int32), near)
        ids, logits = data["id"], data["logit"]
        for tokens, penalty in ((near, self.penalty), (far, self.reduced)):
            if not len(tokens):
                continue
            if len(ids) > int(tokens.max()) and np.array_equal(ids[tokens], tokens):
                at = tokens  # the array is still in vocabulary order (llama.cpp builds it so)
            else:
                at = np.flatnonzero(np.isin(ids, tokens))
            values = logits[at]
            logits[at] = np.where(values <= 0, values * penalty, values / penalty)


def build(params: GenerationParams, vocab: Any, n_vocab: int, seed: int, biases: dict[int, float],
          history: Sequence[int], pre: Any, post: Any) -> None:
    """Add the request's samplers: those that change logits everywhere (biases, penalties, DRY) to ``pre``, the
    rest to ``post`` (the same chain when there is no grammar; ``GuardedSampler`` checks between the two)."""
    add = L.llama_sampler_chain_add
    keep: list[Any] = []
    if biases:
        arr = (L.llama_logit_bias * len(biases))(*(L.llama_logit_bias(t, b) for t, b in biases.items()))
        add(pre, L.llama_sampler_init_logit_bias(n_vocab, len(biases), arr))
    order = _order(params)
    greedy = params.temperature <= 0 or params.top_k == 1
    if REP_PEN in order or greedy or params.mirostat:
        for sampler in _repetition(params, vocab, n_vocab, history, keep):
            add(pre, sampler)
    if greedy:
        add(post, L.llama_sampler_init_greedy())
    elif params.mirostat == 1:
        add(post, L.llama_sampler_init_temp(params.temperature))
        add(post, L.llama_sampler_init_mirostat(n_vocab, seed, params.mirostat_tau, params.mirostat_eta, 100))
    elif params.mirostat == 2:
        add(post, L.llama_sampler_init_temp(params.temperature))
        add(post, L.llama_sampler_init_mirostat_v2(seed, params.mirostat_tau, params.mirostat_eta))
    else:
        if params.nsigma > 0:
            add(post, L.llama_sampler_init_top_n_sigma(params.nsigma))
        for sid in order:
            for sampler in _ordered(sid, params, seed, keep):
                add(post, sampler)
        add(post, L.llama_sampler_init_dist(seed))
    if keep:  # (in ``post``'s entry also when some sit in ``pre``: both chains are freed together)
        _alive[ctypes.addressof(post.contents)] = keep


def _order(params: GenerationParams) -> tuple[int, ...]:
    """KoboldCpp uses ``sampler_order`` when it has 1 to 7 entries; each id is applied once."""
    return tuple(dict.fromkeys(params.sampler_order)) if 1 <= len(params.sampler_order) <= 7 else KOBOLD_ORDER


def _repetition(params: GenerationParams, vocab: Any, n_vocab: int, history: Sequence[int],
                keep: list[Any]) -> list[Any]:
    out = []
    sloped = params.rep_pen_slope != 1.0 and params.repeat_penalty != 1.0 and params.repeat_last_n > 0
    flat = 1.0 if sloped else params.repeat_penalty
    if flat != 1.0 or params.presence_penalty or params.frequency_penalty:
        out.append((L.llama_sampler_init_penalties(n_vocab, params.repeat_last_n, flat,
                                                   params.frequency_penalty, params.presence_penalty),
                    params.repeat_last_n))
    if sloped:
        rule = SlopedPenalty(params.repeat_penalty, params.repeat_last_n, params.rep_pen_slope)
        sampler = PySampler("warren-rep-pen-slope", rule, rule.accept)
        keep.append(sampler)
        out.append((sampler.sampler, params.repeat_last_n))
    if params.dry_multiplier > 0:
        breakers = [b.encode("utf-8") for b in params.dry_sequence_breakers if b]
        arr = (ctypes.c_char_p * max(1, len(breakers)))(*breakers)
        last_n = params.dry_penalty_last_n if params.dry_penalty_last_n > 0 else -1  # KoboldCpp's 0: everything
        out.append((L.llama_sampler_init_dry(vocab, params.dry_multiplier, params.dry_base,
                                             params.dry_allowed_length, last_n, arr, len(breakers)),
                    len(history) if last_n < 0 else last_n))
    for sampler, span in out:
        for token in history[max(0, len(history) - span):]:
            L.llama_sampler_accept(sampler, token)
    return [sampler for sampler, _ in out]


def _ordered(sid: int, params: GenerationParams, seed: int, keep: list[Any]) -> list[Any]:
    """The samplers that KoboldCpp's id ``sid`` stands for here (none when its value is "off")."""
    def py(name: str, fn: Callable[[np.ndarray], np.ndarray | None]) -> Any:
        sampler = PySampler(name, fn)
        keep.append(sampler)
        return sampler.sampler

    if sid == TOP_K and params.top_k > 0:
        return [L.llama_sampler_init_top_k(params.top_k)]
    if sid == TOP_A and params.top_a > 0:
        return [py("warren-top-a", top_a(params.top_a))]
    if sid == TOP_P:
        return ([L.llama_sampler_init_top_p(params.top_p, 1)] if params.top_p < 1.0 else []) + \
            ([L.llama_sampler_init_min_p(params.min_p, 1)] if params.min_p > 0 else [])
    if sid == TFS and 0 < params.tfs < 1.0:
        return [py("warren-tfs", tail_free(params.tfs))]
    if sid == TYPICAL and params.typical_p < 1.0:
        return [L.llama_sampler_init_typical(params.typical_p, 1)]
    if sid == TEMPERATURE:
        smooth = [L.llama_sampler_init_xtc(params.xtc_probability, params.xtc_threshold, 1, seed)] \
            if params.xtc_probability > 0 else []
        if params.smoothing_factor > 0:
            smooth.append(py("warren-smoothing", smoothing(params.smoothing_factor, params.smoothing_curve)))
        if params.dynatemp_range > 0:
            return smooth + [L.llama_sampler_init_temp_ext(params.temperature, params.dynatemp_range,
                                                           params.dynatemp_exponent)]
        return smooth + [L.llama_sampler_init_temp(params.temperature)]
    return []


def free(chain: Any) -> None:
    _alive.pop(ctypes.addressof(chain.contents), None)
    L.llama_sampler_free(chain)
