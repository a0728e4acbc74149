"""The one serving path of an embeddings request, shared by KoboldCpp's, OpenAI's and Ollama's routes.

Each dialect builds an ``EmbedRequest`` (``warren/embeddings.py``) and writes its own body; this module picks
the model and runs the request on it, once:

- **Which model.** ``/m/{name}`` wins; then the body's ``model``; with neither, the ``--embeddingsmodel`` if
  the server was given one, else the active model. A name the catalog does not know is served by the
  ``--embeddingsmodel`` when there is one (KoboldCpp serves its embeddings model whatever ``model`` says, and
  RAG tools hard-code OpenAI's names such as ``text-embedding-3-small``); otherwise the usual rule holds
  (``client_model``: one model serves any name, several give a 404 that lists them). KoboldCpp's own route
  takes no model name: it is the embeddings model's, or the active model's.
- **One round trip.** Every input of the request goes to the worker in one ``Embed`` frame, in the model's
  turn (``ModelInstance.embed``): a batch of 100 texts is one request, not 100.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request

from warren.api import serving
from warren.api.deps import client_model, get_pool, model_from_path
from warren.embeddings import EmbeddingResult, EmbedRequest
from warren.errors import InvalidRequest, ModelNotFound
from warren.pool.instance import ModelInstance
from warren.pool.pool import Pool


@dataclass(frozen=True, slots=True)
class Embedded:
    instance: ModelInstance
    result: EmbeddingResult
    load_seconds: float  # waiting for the model (a load, room): Ollama reports it


def model_for(request: Request, name: str | None) -> str | None:
    """The model an embeddings request is served by (see the module's docstring); None: the active model."""
    pool = get_pool(request)
    on_path = model_from_path(request)
    if on_path:
        return on_path
    fallback = embeddings_model(pool)
    if not name:
        return fallback
    try:
        return client_model(pool, name)
    except ModelNotFound:
        if fallback is None:
            raise
        return fallback


def embeddings_model(pool: Pool) -> str | None:
    """The ``--embeddingsmodel``'s catalog name, if the server was started with one."""
    return pool.catalog.embeddings_name


async def embed(request: Request, model: str | None, embed_request: EmbedRequest, *,
                on_ready: Callable[[ModelInstance], None] | None = None,
                dimensions: int | None = None) -> Embedded:
    """Run ``embed_request`` on ``model`` (already resolved by ``model_for``). ``dimensions``: the vector size
    the client asked for (OpenAI); a model's vectors have one size, so any other is refused."""
    checked = embed_request.check()

    async def work(instance: ModelInstance) -> EmbeddingResult:
        return await instance.embed(checked)

    instance, result, waited = await serving.with_model(request, model, work, on_ready=on_ready)
    if dimensions is not None and dimensions != result.dim:
        raise InvalidRequest(f"model {instance.name!r} makes vectors of {result.dim} dimensions, not {dimensions}",
                             param="dimensions", hint="leave dimensions out, or ask for the model's own size")
    return Embedded(instance, result, waited)


def list_body(embedded: Embedded, encoding_format: Literal["float", "base64"] = "float") -> dict[str, Any]:
    """OpenAI's answer, which KoboldCpp's ``/api/extra/embeddings`` sends too (one handler serves both routes
    there): base64 is the little-endian float32 bytes, as OpenAI's clients decode it."""
    r = embedded.result
    data = [{"object": "embedding", "index": i,
             "embedding": r.base64(i) if encoding_format == "base64" else r.vector(i)} for i in range(len(r))]
    return {"object": "list", "data": data, "model": embedded.instance.name,
            "usage": {"prompt_tokens": r.prompt_tokens, "total_tokens": r.prompt_tokens}}
