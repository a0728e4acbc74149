"""llama.cpp's ``GET /props``, which KoboldCpp serves too: SillyTavern's KoboldCpp connection reads the
context size and the chat template from it.

The model is the one the request addresses (the active one, or ``/m/{name}``); asking does not load it.
``model_path`` is the file's name only, as every client-facing listing redacts where the operator keeps
models. ``chat_template`` is the template warren renders chats with (``warren/api/chat_format.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from warren import __version__
from warren.api.chat_format import chat_format
from warren.api.deps import get_instance, get_pool, require_api_key
from warren.pool.instance import ModelInstance

router = APIRouter()


@router.get("/props", dependencies=[Depends(require_api_key)])
async def props(request: Request, instance: ModelInstance = Depends(get_instance)) -> dict[str, Any]:
    pool = get_pool(request)
    fmt = chat_format(pool, instance.name)
    n_ctx = instance.context_size
    return {
        "default_generation_settings": {"n_ctx": n_ctx, "params": {"n_predict": pool.server.default_gen_amount}},
        "n_ctx": n_ctx,
        "total_slots": instance.settings.parallel,  # requests served at once (--parallelrequests); more queue
        "model_path": instance.settings.path.name,
        "model_alias": instance.name,
        "chat_template": fmt.template,
        "chat_template_name": fmt.name,
        "modalities": {"vision": False, "audio": False},
        "build_info": f"warren {__version__}",
    }
