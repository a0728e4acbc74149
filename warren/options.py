"""KoboldCpp's options, declared once: command-line flags and ``.kcpps`` keys come from this table.

A KoboldCpp user's command line and saved ``.kcpps`` file must keep working, so each option keeps
KoboldCpp's key (the argparse ``dest``, which is also the JSON key in ``.kcpps``), its flag names,
aliases and defaults. Each row also says what warren does with it:

- ``SUPPORTED``: honoured.
- ``ACCEPTED``: accepted with a note that says what warren does instead (GUI-only flags, backend
  selection, which llama-cpp-python fixes at build time).
- ``REFUSED``: a KoboldCpp feature warren does not implement. On the command line it is an error
  that names the flag and the reason; in a ``.kcpps`` file (where every key is always present) a
  non-default value is listed in one warning.

``warren``'s own options (``--check``, ``--analyze`` …) live in ``warren/cli/parser.py``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Support(enum.Enum):
    SUPPORTED = "supported"
    ACCEPTED = "accepted"
    REFUSED = "refused"


class Kind(enum.Enum):
    """How a value is parsed from the command line and coerced from JSON."""

    FLAG = "flag"  # store_true
    INT = "int"
    FLOAT = "float"
    STR = "str"
    OPT_INT = "opt_int"  # nargs='?' with a const (``--multiuser`` alone means 1)
    FLOATS = "floats"  # nargs='+'
    STRS = "strs"  # nargs='*' or '+'


@dataclass(frozen=True, slots=True)
class Option:
    key: str
    flags: tuple[str, ...]
    kind: Kind
    default: Any
    help: str = ""
    support: Support = Support.SUPPORTED
    reason: str = ""  # why ACCEPTED has no effect, or why REFUSED is refused
    const: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


S, A, R = Support.SUPPORTED, Support.ACCEPTED, Support.REFUSED
K = Kind

_GUI = "warren has no GUI launcher"
_HORDE = "warren does not join the AI Horde; it serves only its own clients"
_BACKEND = "the compute backend is fixed when llama-cpp-python is built; use --gpulayers to offload"
_IMAGE = "image generation is not part of warren"
_AUDIO = "speech models are not part of warren"

OPTIONS: tuple[Option, ...] = (
    # -- model and memory --------------------------------------------------------------------------
    Option("model", ("--model", "-m"), K.STRS, [], "GGUF model file to serve (the active model)."),
    Option("contextsize", ("--contextsize", "--ctx-size", "-c"), K.INT, 8192,
           "Context size to allocate, in tokens [256, 262144]."),
    Option("threads", ("--threads", "-t"), K.INT, -1, "CPU threads; 0 or less picks automatically."),
    Option("blasthreads", ("--blasthreads", "--batchthreads", "--threadsbatch", "--threads-batch"), K.INT, 0,
           "Threads for prompt processing; 0 means the same as --threads."),
    Option("gpulayers", ("--gpulayers", "--gpu-layers", "--n-gpu-layers", "-ngl"), K.OPT_INT, -1,
           "Layers to offload to the GPU; -1 offloads all when the build supports it, 0 none.", const=1),
    Option("batchsize", ("--batchsize", "--blasbatchsize", "--batch-size", "-b"), K.INT, 512,
           "Prompt-processing batch size: one of -1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096."),
    Option("usemmap", ("--usemmap",), K.FLAG, False, "Map the model file into memory (warren's default)."),
    Option("nommap", ("--nommap", "--no-mmap"), K.FLAG, False, "Read the model into private memory."),
    Option("usemlock", ("--usemlock", "--mlock"), K.FLAG, False,
           "Lock the model in RAM (implies --usemmap; needs a memlock limit above the model size)."),
    Option("flashattention", ("--flashattention", "--flash-attn", "-fa"), K.FLAG, False,
           "Flash attention on (without this flag or the next, warren measures which is faster, per model and CPU)."),
    Option("noflashattention", ("--noflashattention", "--no-flash-attn"), K.FLAG, False, "Flash attention off."),
    Option("quantkv", ("--quantkv",), K.INT, 0, "KV cache type: 0 = f16, 1 = q8_0, 2 = q4_0."),
    Option("ropeconfig", ("--ropeconfig",), K.FLOATS, [0.0, 10000.0],
           "RoPE frequency scale and base; scale 0 uses the model's own values."),
    Option("usecpu", ("--usecpu",), K.FLAG, False, "Do not offload to a GPU (same as --gpulayers 0)."),
    Option("usecuda", ("--usecuda", "--usecublas", "--usehipblas"), K.STRS, None, support=A, reason=_BACKEND),
    Option("usevulkan", ("--usevulkan",), K.STRS, None, support=A, reason=_BACKEND),
    Option("useclblast", ("--useclblast",), K.STRS, None, support=A, reason=_BACKEND),
    Option("noavx2", ("--noavx2",), K.FLAG, False, support=A, reason=_BACKEND),
    Option("failsafe", ("--failsafe",), K.FLAG, False, support=A, reason=_BACKEND),
    Option("noblas", ("--noblas",), K.FLAG, False, support=A, reason=_BACKEND),
    # -- generation defaults -----------------------------------------------------------------------
    Option("defaultgenamt", ("--defaultgenamt",), K.INT, 768,
           "Tokens to generate when a request gives no max_length [64, 8192]."),
    Option("genlimit", ("--genlimit", "--promptlimit"), K.INT, 0, "Hard cap on generated tokens (0 = none)."),
    # -- server ------------------------------------------------------------------------------------
    Option("port", ("--port",), K.INT, 5001, "Port to listen on."),
    Option("host", ("--host",), K.STR, "", "Address to bind; warren binds 127.0.0.1 when empty."),
    Option("multiuser", ("--multiuser",), K.OPT_INT, 1,
           "Queue concurrent requests: 0 rejects when busy, 1 queues up to 6, N queues N-1.", const=1),
    Option("parallelrequests", ("--parallelrequests", "--parallel-requests", "-np"), K.INT, 1,
           "Requests one model serves at once, batched in one context (more queue, as --multiuser says)."),
    Option("password", ("--password",), K.STR, None, "API key required as a Bearer token on generation."),
    Option("maxrequestsize", ("--maxrequestsize",), K.INT, 32, "Largest request body, in MB."),
    Option("nomodel", ("--nomodel",), K.FLAG, False, "Start without loading a model."),
    Option("quiet", ("--quiet",), K.FLAG, False, "Do not log prompts and generations."),
    Option("debugmode", ("--debugmode",), K.OPT_INT, 0, "More logging (1), including llama.cpp's (2).", const=1),
    # -- admin -------------------------------------------------------------------------------------
    Option("admin", ("--admin",), K.FLAG, False, "Enable the admin API (model swaps at runtime)."),
    Option("admindir", ("--admindir",), K.STR, "", "Directory of .gguf/.kcpps files the admin API may load."),
    Option("adminpassword", ("--adminpassword",), K.STR, None, "Bearer token for the admin API."),
    # -- config files ------------------------------------------------------------------------------
    Option("config", ("--config",), K.STR, None, "Load settings from a .kcpps file (flags given here win)."),
    Option("exportconfig", ("--exportconfig",), K.STR, "", "Write the settings as a .kcpps file and exit."),
    Option("analyze", ("--analyze",), K.STR, "", "Print a GGUF file's metadata and memory estimate, then exit."),
    # -- warren's own: the model pool (KoboldCpp ignores these keys in a .kcpps) -----------------------
    Option("modelsdir", ("--models-dir", "--modelsdir"), K.STR, "",
           "Directory of .gguf/.kcpps files that can be loaded by name (like --admindir, without admin mode)."),
    Option("catalog", ("--catalog",), K.STR, "", "A TOML file listing models with settings, pinning, keep-alive."),
    Option("memorybudget", ("--memory-budget", "--memorybudget"), K.STR, "",
           "Memory all loaded models may use: bytes (8G, 512M) or a share of RAM (60%). Default: 75% of "
           "the memory available at start-up."),
    Option("cluster", ("--cluster",), K.STR, "",
           "Place each model's worker on a node of the Ray cluster at this address (HOST:PORT of its head, "
           "ray://HOST:PORT, or auto); --memory-budget is then per node. Needs pip install 'warren[ray]'."),
    Option("maxmodels", ("--max-models", "--maxmodels"), K.INT, 0,
           "Most models loaded at once (0: no cap); parked models do not count."),
    Option("keepalive", ("--keepalive",), K.STR, "5m",
           "Unload a model idle this long (seconds, or 30s/5m/1h; -1: never)."),
    Option("loadwait", ("--loadwait",), K.FLOAT, 60.0,
           "Seconds a request waits for memory held by busy models before a 503."),
    Option("nowarmspare", ("--no-warm-spare", "--nowarmspare"), K.FLAG, False,
           "Do not keep a started worker ready for the next load."),
    Option("nopark", ("--no-park", "--nopark"), K.FLAG, False,
           "Stop models evicted to make room instead of parking them (a parked model keeps its worker and "
           "tokenizer tables within the budget, so switching back to it takes a new context only)."),
    Option("kvcachedir", ("--kvcache-dir", "--kvcachedir"), K.STR, "",
           "Keep the KV state (the conversation's cache) of stopped models in files in this directory, so the next "
           "load of the model, even after a restart, does not read the conversation again. Off when not given."),
    Option("kvcachesize", ("--kvcache-size", "--kvcachesize"), K.INT, 2048,
           "MB the --kvcache-dir files may take; the least recently used are deleted first."),
    Option("corsorigins", ("--cors-origins", "--corsorigins"), K.STRS, ["*"],
           "Origins browsers may call the API from (KoboldCpp answers every origin: *). Give none to send no "
           "CORS headers."),
    Option("maxconnections", ("--max-connections", "--maxconnections"), K.INT, 64,
           "Requests served at once (streams included); more get a 503 at once. Bounds the server's own memory "
           "with the request-size limit."),
    Option("headertimeout", ("--header-timeout", "--headertimeout"), K.FLOAT, 10.0,
           "Seconds a client may take to send a request's headers; a slower connection is closed."),
    Option("bodytimeout", ("--body-timeout", "--bodytimeout"), K.FLOAT, 30.0,
           "Seconds a client may pause while sending a request's body; a slower one gets a 408."),
    # -- GUI-only, accepted --------------------------------------------------------------------------
    Option("showgui", ("--showgui",), K.FLAG, False, support=A, reason=_GUI),
    Option("skiplauncher", ("--skiplauncher",), K.FLAG, False, support=A, reason=_GUI),
    Option("launch", ("--launch",), K.FLAG, False, support=A, reason="warren does not open a browser"),
    Option("foreground", ("--foreground",), K.FLAG, False, support=A, reason="a Windows console setting"),
    Option("highpriority", ("--highpriority",), K.FLAG, False, support=A,
           reason="process priority is left to the operating system"),
    # -- KoboldCpp features warren does not implement ------------------------------------------------
    Option("tensor_split", ("--tensor_split", "--tensorsplit", "--tensor-split", "-ts"), K.FLOATS, None,
           support=R, reason="multi-GPU splits are not implemented"),
    Option("maingpu", ("--maingpu", "--main-gpu", "-mg"), K.INT, -1, support=R,
           reason="multi-GPU selection is not implemented"),
    Option("lowvram", ("--lowvram", "-nkvo", "--no-kv-offload"), K.FLAG, False, support=A,
           reason="the KV cache stays where llama.cpp puts it, with the offloaded layers"),
    Option("overridenativecontext", ("--overridenativecontext",), K.INT, 0, support=R,
           reason="use --ropeconfig instead"),
    Option("noshift", ("--noshift", "--no-context-shift"), K.FLAG, False,
           help="no ContextShift: a prompt whose oldest text was trimmed is decoded again from the cut, "
                "instead of shifting the cache (warren/worker/shift.py)"),
    Option("nofastforward", ("--nofastforward",), K.FLAG, False, support=A,
           reason="warren always reuses the cached prompt prefix, which does not change the output"),
    Option("useswa", ("--useswa",), K.FLAG, False, support=R, reason="SWA caches are not configurable"),
    Option("smartcontext", ("--smartcontext",), K.FLAG, False, support=A,
           reason="deprecated in KoboldCpp; warren reuses the cached prompt prefix instead"),
    Option("lora", ("--lora",), K.STRS, None, support=R, reason="LoRA adapters are not implemented"),
    Option("loramult", ("--loramult",), K.FLOAT, 1.0, support=R, reason="LoRA adapters are not implemented"),
    Option("mmproj", ("--mmproj",), K.STR, None, support=R, reason="vision models are not implemented"),
    Option("mmprojcpu", ("--mmprojcpu", "--no-mmproj-offload"), K.FLAG, False, support=R,
           reason="vision models are not implemented"),
    Option("visionmaxres", ("--visionmaxres",), K.INT, 1024, support=R, reason="vision models are not implemented"),
    Option("draftmodel", ("--draftmodel", "--model-draft", "-md"), K.STR, None, support=R,
           reason="speculative decoding is not implemented"),
    Option("draftamount", ("--draftamount", "--draft-max", "--draft-n"), K.INT, 8, support=R,
           reason="speculative decoding is not implemented"),
    Option("draftgpulayers", ("--draftgpulayers", "--gpu-layers-draft", "--n-gpu-layers-draft", "-ngld"),
           K.INT, 999, support=R, reason="speculative decoding is not implemented"),
    Option("draftgpusplit", ("--draftgpusplit",), K.FLOATS, None, support=R,
           reason="speculative decoding is not implemented"),
    Option("moeexperts", ("--moeexperts",), K.INT, -1, support=R, reason="MoE overrides are not implemented"),
    Option("moecpu", ("--moecpu", "--n-cpu-moe", "-ncmoe"), K.OPT_INT, 0, support=R, const=999,
           reason="MoE overrides are not implemented"),
    Option("overridekv", ("--overridekv", "--override-kv"), K.STR, None, support=R,
           reason="metadata overrides are not implemented"),
    Option("overridetensors", ("--overridetensors", "--override-tensor", "-ot"), K.STR, None, support=R,
           reason="tensor overrides are not implemented"),
    Option("forceversion", ("--forceversion",), K.INT, 0, support=R, reason="only GGUF files are loaded"),
    Option("nobostoken", ("--nobostoken",), K.FLAG, False, support=R,
           reason="the BOS token follows the model's metadata"),
    Option("enableguidance", ("--enableguidance",), K.FLAG, False, support=R,
           reason="classifier-free guidance is not implemented"),
    Option("chatcompletionsadapter", ("--chatcompletionsadapter",), K.STR, "AutoGuess",
           "Chat turn tags: AutoGuess (the GGUF's template, else its family's), a built-in name "
           "(Gemma, Llama-3, ChatML, Alpaca …) or a KoboldCpp adapter .json."),
    Option("jinja", ("--jinja",), K.FLAG, False, support=A,
           reason="chat requests always use the GGUF's Jinja chat template when it has one"),
    Option("jinja_tools", ("--jinja_tools", "--jinja-tools"), K.FLAG, False, support=R,
           reason="tool calls are not implemented"),
    Option("ssl", ("--ssl",), K.STRS, None, support=R, reason="put a TLS-terminating proxy in front of warren"),
    Option("nocertify", ("--nocertify",), K.FLAG, False, support=R, reason="warren makes no outgoing requests"),
    Option("ratelimit", ("--ratelimit",), K.INT, 0, support=R, reason="rate limiting is not implemented"),
    Option("remotetunnel", ("--remotetunnel",), K.FLAG, False, support=A,
           reason="warren serves on --host/--port only; put your own tunnel (cloudflared, ssh -R) in front"),
    Option("singleinstance", ("--singleinstance",), K.FLAG, False, support=R,
           reason="remote shutdown is not implemented"),
    Option("multiplayer", ("--multiplayer",), K.FLAG, False, support=R, reason="shared sessions are not implemented"),
    Option("websearch", ("--websearch",), K.FLAG, False, support=R, reason="web search is not implemented"),
    Option("preloadstory", ("--preloadstory",), K.STR, None,
           "A KoboldAI Lite story (.json) served at /api/extra/preloadstory to every client."),
    Option("savedatafile", ("--savedatafile",), K.STR, None, support=R, reason="save slots are not implemented"),
    Option("onready", ("--onready",), K.STR, "", support=R, reason="warren does not run shell commands"),
    Option("benchmark", ("--benchmark",), K.STR, None, support=R, reason="see benchmarks/ in the repository"),
    Option("prompt", ("--prompt", "-p"), K.STR, "", support=R, reason="one-shot CLI generation is not implemented"),
    Option("cli", ("--cli",), K.FLAG, False, support=R, reason="terminal chat is not implemented"),
    Option("exporttemplate", ("--exporttemplate",), K.STR, "", support=R, reason="use --exportconfig"),
    Option("ignoremissing", ("--ignoremissing",), K.FLAG, False, support=R,
           reason="warren refuses missing files on purpose"),
    Option("hordeconfig", ("--hordeconfig",), K.STRS, None, support=A, reason=_HORDE),
    Option("hordemodelname", ("--hordemodelname",), K.STR, "", support=A, reason=_HORDE),
    Option("hordeworkername", ("--hordeworkername",), K.STR, "", support=A, reason=_HORDE),
    Option("hordekey", ("--hordekey",), K.STR, "", support=A, reason=_HORDE),
    Option("hordemaxctx", ("--hordemaxctx",), K.INT, 0, support=A, reason=_HORDE),
    Option("hordegenlen", ("--hordegenlen",), K.INT, 0, support=A, reason=_HORDE),
    Option("sdmodel", ("--sdmodel",), K.STR, "", support=R, reason=_IMAGE),
    Option("sdthreads", ("--sdthreads",), K.INT, 0, support=R, reason=_IMAGE),
    Option("sdvae", ("--sdvae",), K.STR, "", support=R, reason=_IMAGE),
    Option("sdlora", ("--sdlora",), K.STR, "", support=R, reason=_IMAGE),
    Option("whispermodel", ("--whispermodel",), K.STR, "", support=R, reason=_AUDIO),
    Option("ttsmodel", ("--ttsmodel",), K.STR, "", support=R, reason=_AUDIO),
    Option("embeddingsmodel", ("--embeddingsmodel",), K.STR, "",
           "A GGUF served as a model of its own for embeddings requests that name no model (and KoboldCpp's "
           "/api/extra/embeddings); any catalog model also makes embeddings when named."),
)

BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}

# Keys KoboldCpp writes into every .kcpps that carry no setting of their own.
BOOKKEEPING_KEYS = frozenset({"model_param", "port_param", "istemplate", "sdconfig", "hordeconfig", "sdnotile",
                              "testmemory", "unpack", "version"})

# KoboldCpp's convert_invalid_args: legacy key -> current key (copied only if the current key is absent).
LEGACY_KEYS = {"usecublas": "usecuda", "blasbatchsize": "batchsize", "promptlimit": "genlimit"}

BATCH_SIZE_CHOICES = (-1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
CONTEXT_RANGE = (256, 262144)
DEFAULT_GEN_RANGE = (64, 8192)


def defaults() -> dict[str, Any]:
    """Every option's KoboldCpp default, as a fresh dict (lists are copied)."""
    return {o.key: (list(o.default) if isinstance(o.default, list) else o.default) for o in OPTIONS}
