"""Human-readable reports: ``--analyze FILE`` (GGUF metadata + estimate) and ``--check`` (the plan)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil

from warren.gguf.estimate import MIB, MemoryEstimate, estimate_memory
from warren.gguf.reader import GGUFInfo, SkippedArray, read_gguf
from warren.validation import Plan


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


def _estimate_lines(est: MemoryEstimate) -> list[str]:
    return [f"  weights       {_mib(est.weights):>14}", f"  KV cache      {_mib(est.kv_cache):>14}",
            f"  compute       {_mib(est.compute):>14}", f"  worker base   {_mib(est.worker_base):>14}",
            f"  total         {_mib(est.total):>14}"]


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
    est = estimate_memory(info, context_size=ctx, batch_size=opts.get("batchsize") or 512,
                          quant_kv=opts.get("quantkv") or 0)
    print(f"memory estimate at context {ctx}:")
    print("\n".join(_estimate_lines(est)))


def print_plan(plan: Plan) -> None:
    s = plan.server
    print(f"server: http://{s.host}:{s.port}  multiuser queue {s.queue_limit}  "
          f"password {'set' if s.password else 'none'}  admin {'on' if s.admin else 'off'}")
    available = psutil.virtual_memory().available
    if plan.model is None or plan.gguf is None:
        print("model: none (--nomodel)")
        return
    m = plan.model
    est = estimate_memory(plan.gguf, context_size=m.context_size, batch_size=m.batch_size, quant_kv=m.quant_kv)
    print(f"model {m.name}: {m.path}")
    print(f"  context {m.context_size}, threads {m.threads}/{m.batch_threads}, batch {m.batch_size}, gpu layers "
          f"{m.gpu_layers}, mmap {'on' if m.use_mmap else 'off'}, mlock {'on' if m.use_mlock else 'off'}, "
          f"flash attention {'on' if m.flash_attention else 'auto'}, KV type {('f16', 'q8_0', 'q4_0')[m.quant_kv]}")
    print("memory estimate:")
    print("\n".join(_estimate_lines(est)))
    verdict = "fits" if est.total <= available else "does NOT fit"
    print(f"available memory now: {_mib(available)} -> the model {verdict}")
