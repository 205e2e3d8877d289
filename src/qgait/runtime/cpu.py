"""What the CPU offers to int8 kernels: the facts a latency or accuracy figure of an int8 model depends on.

Int8 speed-ups and even int8 results differ between CPUs of the same family. With VNNI (``avx512_vnni`` or
``avx_vnni``) a uint8 x int8 dot product accumulates in int32; without it, ONNX Runtime's u8s8 kernels and
oneDNN's AVX2 kernels use ``vpmaddubsw``, whose int16 pair sums saturate (see
:mod:`qgait.export.saturation`). Measured on this project's machines: ORT PTQ W8A8 with an int8 first conv gave
cosine 0.907 against FP on an AVX2 EPYC and 0.9997 on an AVX-512 VNNI EPYC (``python scripts/ptq_first_conv.py``),
and int8 gained 1.9x vs 3.4x over FP32. So every benchmark records :func:`cpu_info`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["INT8_ISA_FLAGS", "cpu_info"]

INT8_ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
"""The ``/proc/cpuinfo`` flags that decide which int8 kernels run (reported in this order when present)."""


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """The CPU model, core count and int8-relevant instruction sets.

    Args:
        cpuinfo: a Linux ``/proc/cpuinfo`` file; when it cannot be read (other OS), the model comes from
            :func:`platform.processor` and the flags are empty.

    Returns:
        ``{"model": str, "logical_cores": int, "torch_capability": str | None, "int8_isa": [flag, ...],
        "vnni": bool}``: ``torch_capability`` is ``torch.backends.cpu.get_cpu_capability()`` (e.g.
        ``"AVX512"``, ``"AVX2"``), ``vnni`` whether int32-accumulating u8 x s8 dot products exist.
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - torch missing or too old: the flags still say it
        capability = None
    isa = [f for f in INT8_ISA_FLAGS if f in flags]
    return {"model": model, "logical_cores": os.cpu_count() or 1, "torch_capability": capability, "int8_isa": isa,
            "vnni": "avx512_vnni" in flags or "avx_vnni" in flags}
