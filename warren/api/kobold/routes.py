"""KoboldCpp's API: ``/api/v1/*`` (KoboldAI United, also as ``/api/latest/*``) and ``/api/extra/*``.

Shapes are KoboldCpp's (``shared/reference/koboldcpp.md`` §3): the same paths, fields and SSE format,
so KoboldAI Lite, SillyTavern and scripts written for KoboldCpp work unchanged.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from warren import __version__
from warren.api import embedding, logprobs, serving, sse
from warren.api.deps import bearer_ok, get_instance, get_pool, model_from_path, require_api_key
from warren.api.errors import Dialect, error_body
from warren.api.kobold.genkeys import GenKeys, Ticket
from warren.api.kobold.schemas import (
    DetokenizeRequest,
    EmbeddingsRequest,
    GenerateRequest,
    GenKeyRequest,
    TokenizeRequest,
)
from warren.api.kobold.translate import constraints, finish_reason, perf_fields, to_params
from warren.api.serving import Item
from warren.embeddings import EmbedRequest, Truncate
from warren.errors import WarrenError
from warren.params import GenerationResult
from warren.pool.instance import ModelInstance
from warren.pool.pool import Pool

KOBOLD_API_VERSION = "1.2.5"  # the KoboldAI United API version KoboldCpp reports
KOBOLDCPP_VERSION = "1.102"  # the KoboldCpp release whose API warren follows

router = APIRouter()
protected = [Depends(require_api_key)]


def _both(path: str) -> list[str]:
    return [f"/api/v1{path}", f"/api/latest{path}"]


def _route(method: str, paths: list[str], **kw: Any):  # type: ignore[no-untyped-def]
    """Register one handler under several paths (KoboldCpp serves /api/v1 and /api/latest alike)."""
    def deco(fn):  # type: ignore[no-untyped-def]
        for p in paths:
            router.add_api_route(p, fn, methods=[method], **kw)
        return fn
    return deco


def _get(paths: list[str], **kw: Any):  # type: ignore[no-untyped-def]
    return _route("GET", paths, **kw)


def _post(paths: list[str], **kw: Any):  # type: ignore[no-untyped-def]
    return _route("POST", paths, **kw)


# -- information ---------------------------------------------------------------------------------------
@_get(_both("/model"))
async def model_name(request: Request) -> dict[str, str]:
    pool = get_pool(request)
    if not bearer_ok(request, pool.server.password):
        return {"result": "koboldcpp/protected-model"}
    if model_from_path(request) is None and pool.active_name is None:
        return {"result": "koboldcpp/inactive"}  # KoboldCpp's name when started with --nomodel
    return {"result": f"koboldcpp/{get_instance(request).name}"}


@_get(_both("/info/version"))
async def api_version() -> dict[str, str]:
    return {"result": KOBOLD_API_VERSION}


@_get(["/api/extra/version"])
async def extra_version(pool: Pool = Depends(get_pool)) -> dict[str, Any]:
    s = pool.server
    admin = 0 if not (s.admin and s.admin_dir) else (2 if s.admin_password else 1)
    return {"result": "KoboldCpp", "version": KOBOLDCPP_VERSION, "warren": __version__,
            "protected": bool(s.password), "llm": pool.active_name is not None, "txt2img": False, "vision": False,
            "audio": False, "transcribe": False, "multiplayer": False, "websearch": False, "tts": False,
            "embeddings": True, "savedata": False, "admin": admin, "guidance": False, "jinja": True}


@_get(["/api/extra/true_max_context_length"] + _both("/config/max_context_length"))
async def max_context(instance: ModelInstance = Depends(get_instance)) -> dict[str, int]:
    return {"value": instance.context_size}


@_get(["/api/extra/preloadstory"])
async def preload_story(pool: Pool = Depends(get_pool)) -> Response:
    """KoboldAI Lite asks on every connect: the ``--preloadstory`` story as it was saved, or ``{}``."""
    return Response(pool.server.preload_story or "{}", media_type="application/json")


@_get(_both("/config/max_length"))
async def max_length(pool: Pool = Depends(get_pool)) -> dict[str, int]:
    return {"value": pool.server.default_gen_amount}


@_get(_both("/config/soft_prompt"))
async def soft_prompt() -> dict[str, str]:
    return {"value": ""}


@_get(_both("/config/soft_prompts_list"))
async def soft_prompts() -> dict[str, list[str]]:
    return {"values": []}


@_get(["/api/extra/perf"])
async def perf(request: Request, instance: ModelInstance = Depends(get_instance)) -> dict[str, Any]:
    now = time.monotonic()
    return {
        **perf_fields(instance.last), "last_draft_success": 0, "last_draft_failed": 0,
        "total_gens": instance.requests, "total_img_gens": 0, "total_tts_gens": 0, "total_transcribe_gens": 0,
        "queue": instance.queued, "idle": 0 if instance.busy else 1, "hordeexitcounter": 0,
        "uptime": now - instance.created, "idletime": (now - instance.last_used) if instance.last_used else 0.0,
        "quiet": get_pool(request).server.quiet,
    }


# -- generation ----------------------------------------------------------------------------------------
def _result_body(r: GenerationResult) -> dict[str, Any]:
    return {"results": [{"text": r.text, "finish_reason": finish_reason(r.finish_reason), "tool_calls": [],
                         "logprobs": logprobs.chat(r), "prompt_tokens": r.prompt_tokens,
                         "completion_tokens": r.completion_tokens}]}


def genkeys(request: Request) -> GenKeys:
    keys: GenKeys = request.app.state.genkeys
    return keys


async def _generate(body: GenerateRequest, request: Request, *, stream: bool) -> serving.Started:
    """The serving path with KoboldCpp's genkey rules hung on its hooks (``warren/api/kobold/genkeys.py``)."""
    server, keys = get_pool(request).server, genkeys(request)
    ticket = Ticket(body.genkey)
    admitted_on: list[str] = []

    def enter(instance: ModelInstance) -> None:
        admitted_on.append(instance.name)
        keys.enter(instance, ticket)

    return await serving.generate(
        request, model_from_path(request), lambda i: to_params(body, server, i.context_size), stream=stream,
        constraints=constraints(body), abort=ticket.abort, on_ready=enter, on_start=ticket.mark_started,
        on_text=ticket.add if body.genkey else None,
        on_end=lambda: keys.leave(admitted_on[-1] if admitted_on else None, ticket))


@_post(_both("/generate"), dependencies=protected)
async def generate(body: GenerateRequest, request: Request) -> dict[str, Any]:
    done = await _generate(body, request, stream=False)
    assert done.result is not None
    genkeys(request).finished(done.instance.name, body.genkey, logprobs.chat(done.result))
    return _result_body(done.result)


@_post(["/api/extra/generate/stream"], dependencies=protected)
async def generate_stream(body: GenerateRequest, request: Request) -> StreamingResponse:
    started = await _generate(body, request, stream=True)

    def on_item(item: Item) -> list[bytes]:
        if isinstance(item, str):
            return [sse.event({"token": item, "finish_reason": None}, "message")]
        genkeys(request).finished(started.instance.name, body.genkey, logprobs.chat(item))
        return [sse.event({"token": "", "finish_reason": finish_reason(item.finish_reason)}, "message")]

    def on_error(exc: WarrenError) -> list[bytes]:
        return [sse.event(error_body(Dialect.KOBOLD, exc), "error")]

    return started.response(on_item, on_error, media_type="text/event-stream", headers=sse.SSE_HEADERS)


@_post(["/api/extra/generate/check"], dependencies=protected)
async def check_post(body: GenKeyRequest, request: Request, instance: ModelInstance = Depends(get_instance)
                     ) -> dict[str, Any]:
    return {"results": [{"text": genkeys(request).partial_text(instance, body.genkey)}]}


@_post(["/api/extra/last_logprobs"], dependencies=protected)
async def last_logprobs_post(body: GenKeyRequest, request: Request, instance: ModelInstance = Depends(get_instance)
                             ) -> dict[str, Any]:
    return {"logprobs": genkeys(request).last_logprobs(instance, body.genkey)}


@_get(["/api/extra/last_logprobs"], dependencies=protected)
async def last_logprobs_get() -> dict[str, Any]:
    return {"logprobs": None}  # no genkey: nobody's logprobs are shown, as for generate/check


@_get(["/api/extra/generate/check"], dependencies=protected)
async def check_get() -> dict[str, Any]:
    return {"results": [{"text": ""}]}  # no genkey: nobody's generation is shown (warren/api/kobold/genkeys.py)


@_post(["/api/extra/abort"], dependencies=protected)
async def abort(body: GenKeyRequest, request: Request, instance: ModelInstance = Depends(get_instance)
                ) -> dict[str, str]:
    success, done = genkeys(request).abort(instance, body.genkey)
    return {"success": str(success).lower(), "done": str(done).lower()}  # KoboldCpp sends strings


# -- tokens --------------------------------------------------------------------------------------------
@_post(["/api/extra/tokencount", "/api/extra/tokenize"], dependencies=protected)
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    async with await get_pool(request).acquire(model_from_path(request)) as instance:
        ids = await instance.tokenize(body.prompt, body.special)
    return {"value": len(ids), "ids": ids}


@_post(["/api/extra/detokenize"], dependencies=protected)
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    async with await get_pool(request).acquire(model_from_path(request)) as instance:
        return {"result": await instance.detokenize(body.ids), "success": True}


# -- embeddings ------------------------------------------------------------------------------------------
@_post(["/api/extra/embeddings"], dependencies=protected)
async def embeddings(body: EmbeddingsRequest, request: Request) -> dict[str, Any]:
    """As KoboldCpp: unit-length vectors in OpenAI's list body; a long input keeps its end (and its BOS) unless
    ``truncate`` is false, which makes it a 400."""
    inputs = (body.input,) if isinstance(body.input, str) else tuple(body.input)
    req = EmbedRequest(inputs, truncate=Truncate.KEEP_END if body.truncate else Truncate.REFUSE)
    result = await embedding.embed(request, embedding.model_for(request, None), req)
    return embedding.list_body(result, body.encoding_format)
