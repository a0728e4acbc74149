"""OpenAI's API: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``, ``POST /v1/embeddings``.

Streaming is SSE of ``data: {chunk}`` lines ending with ``data: [DONE]``; a failure mid-stream is sent
as ``data: {"error": {...}}`` (the official clients raise it as an APIError) and the stream ends.
The ``model`` field routes the request: with several models it must name one of them (404 otherwise); a
server of one model serves it whatever the name, as KoboldCpp does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from warren.api import embedding, logprobs, serving, sse
from warren.api.chat_format import chat_format
from warren.api.deps import client_model, get_pool, model_from_path, require_api_key
from warren.api.errors import Dialect, error_body
from warren.api.openai import translate
from warren.api.openai.schemas import ChatRequest, CompletionRequest, EmbeddingsRequest
from warren.api.serving import Item
from warren.embeddings import EmbedRequest
from warren.errors import WarrenError
from warren.grammar import Constraints
from warren.params import GenerationParams, GenerationResult
from warren.pool.instance import ModelInstance
from warren.pool.pool import Pool

router = APIRouter()
protected = [Depends(require_api_key)]


@router.get("/v1/models", dependencies=protected)
async def list_models(pool: Pool = Depends(get_pool)) -> dict[str, Any]:
    """Every catalog entry, with its state (loaded or not), handle and whether it is the active model."""
    now = int(time.time())
    return {"object": "list", "data": [
        {"id": d["name"], "object": "model", "created": now, "owned_by": "warren", "state": d["state"],
         "handle": d["handle"], "active": d["active"]} for d in pool.status()["instances"]]}


def _stream(started: serving.Started, chat: bool, include_usage: bool) -> StreamingResponse:
    instance = started.instance
    chunk_id = translate.new_id("chatcmpl" if chat else "cmpl")
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choice: dict[str, Any], **extra: Any) -> bytes:
        return sse.event({"id": chunk_id, "object": obj, "created": created, "model": instance.name,
                          "choices": [choice] if choice else [], **extra})

    def on_item(item: Item) -> list[bytes]:
        if isinstance(item, str):
            if chat:
                return [chunk({"index": 0, "delta": {"content": item}, "logprobs": None, "finish_reason": None})]
            return [chunk({"index": 0, "text": item, "logprobs": None, "finish_reason": None})]
        assert isinstance(item, GenerationResult)
        reason = translate.finish_reason(item.finish_reason)
        end = {"index": 0, "delta": {}, "logprobs": logprobs.chat(item), "finish_reason": reason} if chat else \
            {"index": 0, "text": "", "logprobs": logprobs.completion(item), "finish_reason": reason}
        out = [chunk(end)]
        if include_usage:
            out.append(chunk({}, usage=translate.usage(item)))
        return out + [sse.event("[DONE]")]

    def on_error(exc: WarrenError) -> list[bytes]:
        return [sse.event(error_body(Dialect.OPENAI, exc))]

    head = [chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                   "finish_reason": None})] if chat else []
    return started.response(on_item, on_error, media_type="text/event-stream", headers=sse.SSE_HEADERS, head=head)


async def _run(request: Request, model: str | None, constraints: Constraints,
               make_params: Callable[[ModelInstance], GenerationParams], stream: bool, chat: bool,
               include_usage: bool, echo: bool = False) -> Any:
    """``/m/{name}`` wins over the body's ``model``; neither means the active model; a server of one model serves
    it whatever ``model`` says (``client_model``)."""
    name = model_from_path(request) or client_model(get_pool(request), model)
    started = await serving.generate(request, name, make_params, stream=stream, constraints=constraints)
    if stream:
        return _stream(started, chat, include_usage)
    assert started.result is not None
    name = started.instance.name
    return translate.chat_body(started.result, name) if chat else \
        translate.completion_body(started.result, name, started.params.prompt if echo else "")


@router.post("/v1/completions", dependencies=protected)
async def completions(body: CompletionRequest, request: Request) -> Any:
    server = get_pool(request).server
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _run(request, body.model, translate.constraints(body),
                      lambda i: translate.completion_params(body, server, i.context_size), body.stream, False, include_usage,
                      body.echo)


@router.post("/v1/chat/completions", dependencies=protected)
async def chat_completions(body: ChatRequest, request: Request) -> Any:
    server = get_pool(request).server
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _run(request, body.model, translate.constraints(body),
                      lambda i: translate.chat_params(body, server, i.model_info, i.context_size,
                                                     chat_format(get_pool(request), i.name), i.name), body.stream, True, include_usage)


@router.post("/v1/embeddings", dependencies=protected)
async def embeddings(body: EmbeddingsRequest, request: Request) -> dict[str, Any]:
    """Unit-length vectors, as OpenAI's are; an input longer than the model's context is a 400, as on OpenAI."""
    model = embedding.model_for(request, body.model)
    result = await embedding.embed(request, model, EmbedRequest(translate.embedding_inputs(body.input)),
                                   dimensions=body.dimensions)
    return embedding.list_body(result, body.encoding_format)
