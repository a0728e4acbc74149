"""llama.cpp's ``GET /props``, which KoboldCpp serves too: SillyTavern's KoboldCpp connection reads the
context size and the chat template from it.

The model is the one the request addresses (the active one, or ``/m/{name}``); asking does not load it.
``model_path`` is the file's name only, as every client-facing listing redacts where the operator keeps
models. ``chat_template`` is the GGUF's.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from warren import __version__
from warren.api.deps import get_instance, get_pool, require_api_key
from warren.pool.instance import ModelInstance

router = APIRouter()


@router.get("/props", dependencies=[Depends(require_api_key)])
async def props(request: Request, instance: ModelInstance = Depends(get_instance)) -> dict[str, Any]:
    pool = get_pool(request)
    info = pool.catalog.gguf_info(pool.catalog.get(instance.name))
    n_ctx = instance.context_size
    return {
        "default_generation_settings": {"n_ctx": n_ctx, "params": {"n_predict": pool.server.default_gen_amount}},
        "n_ctx": n_ctx,
        "total_slots": 1,  # one generation at a time per model; more requests queue (--multiuser)
        "model_path": instance.settings.path.name,
        "model_alias": instance.name,
        "chat_template": info.chat_template or "",
        "modalities": {"vision": False, "audio": False},
        "build_info": f"warren {__version__}",
    }
