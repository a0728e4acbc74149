"""``create_app``: the HTTP server around a ``Pool``.

The lifespan owns the pool: it starts loading the active model in the background (the server
answers at once; requests wait for the model), and stops every worker on shutdown. Each dialect's
router is mounted at the root (the active model) and under ``/m/{model_name}`` (that model).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from warren import __version__
from warren.api.admin import router as admin_router
from warren.api.browser import BrowserGuard, is_loopback
from warren.api.connections import RequestCap
from warren.api.deps import key_matches, operator_key
from warren.api.errors import install_error_handlers
from warren.api.kobold.genkeys import GenKeys
from warren.api.kobold.routes import router as kobold_router
from warren.api.limits import BodyLimit, JsonBodies
from warren.api.llamacpp import router as llamacpp_router
from warren.api.metrics import router as metrics_router
from warren.api.ollama.routes import router as ollama_router
from warren.api.openai.routes import router as openai_router
from warren.api.serving import Serving
from warren.pool.pool import Pool

status_router = APIRouter()


STATIC = Path(__file__).resolve().parent.parent / "web" / "static"


@status_router.get("/", include_in_schema=False)
async def dashboard() -> FileResponse:
    """The dashboard (KoboldCpp serves its Lite UI here)."""
    return FileResponse(STATIC / "index.html")


@status_router.get("/ping")
async def ping() -> dict[str, str]:
    return {"status": "healthy"}


def create_app(pool: Pool, *, preload: bool = True) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(pool.start(), name="preload") if preload else None
        try:
            yield
        finally:
            if loading is not None and not loading.done():
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            await pool.close()

    app = FastAPI(title="warren", version=__version__, lifespan=lifespan,
                  description="A local LLM server for GGUF models: KoboldCpp, OpenAI and Ollama dialects.")
    app.state.pool = pool
    app.state.serving = Serving(pool)
    app.state.genkeys = GenKeys()  # KoboldCpp's generate/check and abort (warren/api/kobold/genkeys.py)
    install_error_handlers(app)
    for router in (kobold_router, openai_router, ollama_router, llamacpp_router):
        app.include_router(router)
        app.include_router(router, prefix="/m/{model_name}")
    for router in (admin_router, metrics_router, status_router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # KoboldCpp answers every origin (browser UIs such as KoboldAI Lite are served from elsewhere);
    # --cors-origins narrows it, and an empty list sends no CORS headers at all. The operator's routes never
    # get "*", and refuse cross-site forgeries and rebinding Host names (warren/api/browser.py).
    key = operator_key(pool.server)
    app.add_middleware(BrowserGuard, loopback_only=is_loopback(pool.server.host),
                       cors_origins=pool.server.cors_origins, has_admin_key=lambda h: bool(key) and key_matches(h, key))
    app.add_middleware(JsonBodies)
    app.add_middleware(BodyLimit, limit=pool.body_limit, idle_timeout=pool.server.body_timeout)
    app.add_middleware(RequestCap, limit=pool.server.max_connections)
    return app
