"""From an allocation to what the quantization layer and ``qgait quantize`` read: a ``bit_map`` and a config file.

``bit_map_of`` gives ``{"layer": {"weight": w, "act": a}}`` for ``QuantConfig(bit_map=...)`` (exact names, so they
take precedence over any pattern; an exact-input layer gets no ``act``). ``write_quant_config`` writes a small
YAML config layered over a quantize config (``base:``) that sets ``quant.config.bit_map``, so that

    qgait quantize runs/mixed/w3_size.yaml --from zoo/gaitbase_casiab_cpu/model.pt

trains the chosen mixed precision with everything else of the base config (schedule, IDC, data).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import BitSpec
from .ilp import Allocation

__all__ = ["bit_map_of", "write_quant_config"]


def bit_map_of(allocation: Allocation | Mapping[str, tuple[int, int | None]]) -> dict[str, dict[str, int]]:
    """``{layer: {"weight": w, "act": a}}`` (``act`` left out where it is ``None``), validated as :class:`BitSpec`.

    Raises:
        pydantic.ValidationError: bits outside 2..8.
    """
    bits = allocation.bits() if isinstance(allocation, Allocation) else allocation
    out = {}
    for name, (w, a) in bits.items():
        spec = {"weight": int(w)} if a is None else {"weight": int(w), "act": int(a)}
        BitSpec.model_validate(spec)
        out[name] = spec
    return out


def write_quant_config(path: str | Path, bit_map: Mapping[str, Mapping[str, int]], base: str | Path, *,
                       name: str | None = None, comment: str | None = None,
                       extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``path``: ``base: <base>``, ``name``, ``quant: {config: {bit_map: ...}}`` (+ ``extra`` top-level keys).

    Args:
        path: the YAML file to write (parent folders created).
        bit_map: from :func:`bit_map_of`.
        base: the quantize config to layer over: a file (written relative to ``path``'s folder, which is how
            ``base:`` is resolved) or a shipped recipe's name (``qgait_w4a4_cpu``).
        name: the experiment name (the run folder's default name); default: the file's stem.
        comment: lines written as a ``#`` comment at the top (e.g. the budget and the search's figures).
        extra: other top-level sections to set (merged over the base by the config loader).

    Returns:
        ``path``.

    Raises:
        ValueError: an empty bit map, ``extra`` setting ``base``/``name``/``quant``.
        pydantic.ValidationError: an entry that is not a valid :class:`BitSpec`.
    """
    import yaml

    if not bit_map:
        raise ValueError("empty bit_map")
    clash = {"base", "name", "quant"} & set(extra or {})
    if clash:
        raise ValueError(f"extra may not set {sorted(clash)}")
    for spec in bit_map.values():
        BitSpec.model_validate(dict(spec))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base_s = str(base)
    if Path(base_s).is_file():
        base_s = os.path.relpath(Path(base_s).resolve(), path.parent.resolve())
    doc = {"base": base_s, "name": name or path.stem, **dict(extra or {}),
           "quant": {"config": {"bit_map": {k: dict(v) for k, v in bit_map.items()}}}}
    text = yaml.safe_dump(doc, sort_keys=False)
    if comment:
        text = "".join(f"# {line}\n" for line in comment.splitlines()) + text
    path.write_text(text)
    return path
