"""Human-readable reports: ``--analyze FILE`` (GGUF metadata + estimate) and ``--check`` (the plan)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil

from warren.catalog import Catalog
from warren.engine_check import EngineReport
from warren.gguf.attention import attention_layout
from warren.gguf.estimate import MIB, SWA_FULL, MemoryEstimate, estimate_memory
from warren.gguf.reader import GGUFInfo, SkippedArray, read_gguf
from warren.validation import Plan
from warren.worker import kvfile


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


def _estimate_lines(est: MemoryEstimate) -> list[str]:
    return [f"  weights       {_mib(est.weights):>14}", f"  KV cache      {_mib(est.kv_cache):>14}",
            f"  compute       {_mib(est.compute):>14}", f"  vocabulary    {_mib(est.vocabulary):>14}",
            f"  worker base   {_mib(est.worker_base):>14}",
            f"  total         {_mib(est.total):>14}", f"  parked        {_mib(est.parked):>14}  (kept by an evicted, parked instance)",
            f"  + context     {_mib(est.kv_cache + est.compute):>14}  (at most: a parked instance keeps its context "
            "when the budget has room, else its conversation's KV state; counted while kept, dropped first when the "
            "budget needs room)"]


def window_note(info: GGUFInfo, est: MemoryEstimate) -> str | None:
    """What the sliding window saves, for a model whose layers slide; None for the others."""
    layout = attention_layout(info)
    if not layout.window:
        return None
    slides = f"{layout.sliding_layers} of {len(layout.layers)} layers attend to a {layout.window}-token window"
    if not SWA_FULL:
        return f"{slides}: their window-sized cache saves {_mib(est.window_saving)} of KV cache"
    return (f"{slides}: a window-sized cache would save {_mib(est.window_saving)} of KV cache; the worker keeps "
            f"llama.cpp's full-size one, which reusing a prompt's prefix needs")


def print_analysis(path: Path, opts: dict[str, Any]) -> None:
    info: GGUFInfo = read_gguf(path)
    print(f"{info.path}  (GGUF v{info.version}, {_mib(info.file_size)})")
    print(f"  architecture {info.architecture}, {info.block_count} layers, {info.parameter_count / 1e6:,.1f} M "
          f"parameters, {info.quantization}, trained context {info.context_length}")
    print("metadata:")
    for key, value in info.metadata.items():
        if isinstance(value, SkippedArray):
            shown = f"[{value.count} × {value.element_type}]"
        else:
            shown = repr(value)
            if len(shown) > 100:
                shown = shown[:97] + "..."
        print(f"  {key} = {shown}")
    ctx = opts.get("contextsize") or 8192
    quant_kv = opts.get("quantkv") or 0
    est = estimate_memory(info, context_size=ctx, batch_size=opts.get("batchsize") or 512, quant_kv=quant_kv,
                          quant_v=quant_kv if opts.get("flashattention") else 0,
                          parallel=opts.get("parallelrequests") or 1)
    print(f"memory estimate at context {ctx}:")
    print("\n".join(_estimate_lines(est)))
    note = window_note(info, est)
    if note:
        print(f"  sliding window: {note}")


def print_plan(plan: Plan, catalog: Catalog) -> None:
    s = plan.server
    print(f"server: http://{s.host}:{s.port}  multiuser queue {s.queue_limit}  "
          f"password {'set' if s.password else 'none'}  admin {'on' if s.admin else 'off'}")
    available = psutil.virtual_memory().available
    print(f"memory budget: {_mib(s.memory_budget)} (available now: {_mib(available)}); max models "
          f"{s.max_models or 'no cap'}; keep-alive {s.keep_alive:g} s")
    if s.kvcache_dir is not None:
        files, used = kvfile.usage(s.kvcache_dir)
        print(f"KV state disk tier: {s.kvcache_dir}, up to {_mib(s.kvcache_bytes)} (now {files} files, {_mib(used)}); "
              "stopped models' conversations are kept there, outside the memory budget")
    else:
        print("KV state disk tier: off (--kvcache-dir): a stopped model's conversation is read again at its next load")
    if plan.model is not None:
        m = plan.model
        print(f"active model {m.name}: {m.path}")
        print(f"  context {m.context_size}, threads {m.threads}/{m.batch_threads}, batch {m.batch_size}, gpu layers "
              f"{m.gpu_layers}, mmap {'on' if m.use_mmap else 'off'}, mlock {'on' if m.use_mlock else 'off'}, "
              f"flash attention {m.flash_attention}, KV type "
              f"{('f16', 'q8_0', 'q4_0')[m.quant_kv]}, requests at once {m.parallel}"
              + (" (sharing one cache of the context's size)" if m.parallel > 1 else ""))
    else:
        print("active model: none (--nomodel)")
    print("catalog:")
    if not catalog.entries:
        print("  (empty)")
    fits: list[str] = []
    used = 0
    for entry in catalog.entries.values():
        if entry.estimate is None:
            print(f"  {entry.name:<28} INVALID: {entry.error}")
            continue
        e = entry.estimate
        flags = " pinned" if entry.pinned else ""
        print(f"  {entry.name:<28} total {_mib(e.total):>11}  (weights {_mib(e.weights)}, KV {_mib(e.kv_cache)}, "
              f"compute {_mib(e.compute)}, vocabulary {_mib(e.vocabulary)}, worker {_mib(e.worker_base)}; "
              f"parked {_mib(e.parked)} + its context, kept while there is room, up to {_mib(e.kv_cache + e.compute)})"
              f"{flags}")
        note = window_note(catalog.gguf_info(entry), e) if e.window_saving else None
        if note:
            print(f"    sliding window: {note}")
        if e.total > s.memory_budget:
            print("    does NOT fit the budget on its own: requests for it are refused")
        elif used + e.total <= s.memory_budget:
            fits.append(entry.name)
            used += e.total
    pinned = [e.name for e in catalog.entries.values() if e.pinned]
    print(f"pinned: {', '.join(pinned) or 'none'}")
    print(f"fit together in the budget: {', '.join(fits) or 'none'} ({_mib(used)}); others load by evicting idle ones"
          + ("" if not s.park else ", which are parked while their parked size still fits (--no-park: stopped)"))


def print_engine(report: EngineReport) -> None:
    b = report.build
    print(f"engine: llama-cpp-python {b.get('version', '?')}"
          + (f", built {report.built_with.get('note')} on {report.built_with.get('built')}" if report.built_with else ""))
    print(f"  CPU features used: {' '.join(report.features) or 'unknown'}")
    print(f"  GPU offload: {'yes' if b.get('gpu_offload') else 'no (CPU only)'}")
    if report.ok:
        print(f"  probe: ok, decoded {report.decoded} tokens of {report.model} in {report.seconds:.2f} s")
    else:
        print(f"  probe: FAILED: {report.error}")
