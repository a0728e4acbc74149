"""Embeddings in every dialect, driven by the official ``openai`` and ``ollama`` clients against a real server on
the default model (a generative model: mean pooling), and by ``--embeddingsmodel`` with a second GGUF."""

from __future__ import annotations

import base64
import functools
import math
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest

from tests.conftest import Server, Servers

MODEL = "SmolLM2-135M-Instruct.Q4_1"
SMOL_DIM = 576  # SmolLM2-135M's embedding length
SIMILAR = ("The cat sat on the mat.", "A kitten was sitting on the rug.")
UNRELATED = "Quarterly tax filings are due in April."
TIMEOUT = 120  # s: an input of 2,048 tokens, on 2 cores shared with other test runs
post = functools.partial(httpx.post, timeout=TIMEOUT)
get = functools.partial(httpx.get, timeout=TIMEOUT)


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_openai_batch_gives_unit_vectors_and_similar_texts_are_closer(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model=MODEL, input=[*SIMILAR, UNRELATED])
    assert r.object == "list" and r.model == MODEL and [d.index for d in r.data] == [0, 1, 2]
    vectors = [d.embedding for d in r.data]
    assert [len(v) for v in vectors] == [SMOL_DIM] * 3
    assert [round(float(np.linalg.norm(v)), 5) for v in vectors] == [1.0, 1.0, 1.0]
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.1
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[1], vectors[2]) + 0.1
    assert r.usage.prompt_tokens == r.usage.total_tokens > 3 * 5


def test_openai_single_string_base64_and_token_input(client: openai.OpenAI, server: Server) -> None:
    floats = client.embeddings.create(model=MODEL, input=SIMILAR[0]).data[0].embedding
    raw = post(f"{server.url}/v1/embeddings",
                     json={"model": MODEL, "input": SIMILAR[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert decoded.tolist() == floats  # the same float32 values, bit for bit
    # The official client asks for base64 when not told otherwise, and decodes it itself: as JSON floats, the same.
    as_json = post(f"{server.url}/v1/embeddings", json={"model": MODEL, "input": SIMILAR[0]}).json()
    assert as_json["data"][0]["embedding"] == floats
    tokens = post(f"{server.url}/api/extra/tokencount", json={"prompt": SIMILAR[0]}).json()["ids"]
    by_ids = client.embeddings.create(model=MODEL, input=[tokens]).data[0].embedding
    assert max(abs(a - b) for a, b in zip(by_ids, floats, strict=True)) < 1e-5


def test_openai_errors(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as too_long:
        client.embeddings.create(model=MODEL, input="word " * 3000)
    assert "2048" in too_long.value.message and too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as dims:
        client.embeddings.create(model=MODEL, input="x", dimensions=64)
    assert f"{SMOL_DIM} dimensions" in dims.value.message
    assert client.embeddings.create(model=MODEL, input="x", dimensions=SMOL_DIM).data[0].embedding
    empty = post(f"{server.url}/v1/embeddings", json={"model": MODEL, "input": []})
    assert empty.status_code == 400 and empty.json()["error"]["type"] == "invalid_request_error"
    many = post(f"{server.url}/v1/embeddings", json={"model": MODEL, "input": ["a"] * 2049})
    assert many.status_code == 400 and "2048" in many.json()["error"]["message"]


def test_ollama_embed_and_legacy_embeddings(server: Server) -> None:
    client = ollama.Client(host=server.url, timeout=TIMEOUT)
    r = client.embed(model=MODEL, input=[*SIMILAR, UNRELATED])
    assert r.model == MODEL and len(r.embeddings) == 3 and r.prompt_eval_count > 15
    assert r.total_duration is not None and r.total_duration > 0
    assert [round(math.hypot(*v), 5) for v in r.embeddings] == [1.0, 1.0, 1.0]
    assert cosine(r.embeddings[0], r.embeddings[1]) > cosine(r.embeddings[0], r.embeddings[2]) + 0.1
    legacy = client.embeddings(model=MODEL, prompt=SIMILAR[0]).embedding
    assert len(legacy) == SMOL_DIM and math.hypot(*legacy) > 1.5  # Ollama's old route: not normalised
    unit = np.array(legacy) / np.linalg.norm(legacy)
    assert np.abs(unit - np.array(r.embeddings[0])).max() < 1e-5
    long = client.embed(model=MODEL, input="word " * 3000)  # Ollama truncates by default
    assert long.prompt_eval_count == 2048
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model=MODEL, input="word " * 3000, truncate=False)
    assert refused.value.status_code == 400 and "2048" in refused.value.error


def test_kobold_route_shape_and_truncation(server: Server) -> None:
    r = post(f"{server.url}/api/extra/embeddings", json={"input": [SIMILAR[0], "word " * 3000]})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "list" and body["model"] == MODEL
    assert [d["index"] for d in body["data"]] == [0, 1] and len(body["data"][0]["embedding"]) == SMOL_DIM
    assert round(float(np.linalg.norm(body["data"][0]["embedding"])), 5) == 1.0
    assert body["usage"]["prompt_tokens"] == 7 + 2048  # the long input kept its last 2048 tokens
    refused = post(f"{server.url}/api/extra/embeddings", json={"input": "word " * 3000, "truncate": False})
    assert refused.status_code == 400 and "2048" in refused.json()["detail"]["msg"]
    assert get(f"{server.url}/api/extra/version").json()["embeddings"] is True


def test_embeddings_model_serves_requests_without_a_known_model(servers: Servers, model_path: Path,
                                                                gemma_path: Path) -> None:
    srv = servers.start("--model", str(model_path), "--embeddingsmodel", str(gemma_path), "--contextsize", "1024")
    kobold = post(f"{srv.url}/api/extra/embeddings", json={"input": "hello"}).json()
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
    hard_coded = client.embeddings.create(model="text-embedding-3-small", input="hello")
    named = client.embeddings.create(model=MODEL, input="hello")
    assert kobold["model"] == hard_coded.model == gemma_path.stem
    assert len(kobold["data"][0]["embedding"]) == len(hard_coded.data[0].embedding) == 640  # Gemma 3 270M
    assert named.model == MODEL and len(named.data[0].embedding) == SMOL_DIM
    # Generation still goes to the --model.
    gen = post(f"{srv.url}/api/v1/generate", json={"prompt": "Hi", "max_length": 2})
    assert gen.status_code == 200 and get(f"{srv.url}/api/v1/model").json()["result"].endswith(MODEL)
