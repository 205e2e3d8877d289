"""Int16 saturation of ONNX Runtime's non-VNNI u8s8 kernels and the first-conv input choice it constrains.

``export_qdq(first_input=...)``: ``"uint8"`` quantizes the first conv's input (exact in the QAT model: the silhouette)
with step 1/255. Stored frames are ``k / 255``, so at 64x44 (:data:`STORED_FRAME_SIZE`) this is exact; after a resize
(e.g. 32x22) it rounds to the nearest 1/255 (error <= 1/510). It lets ONNX Runtime run the first conv, whose output is
the largest activation of the network, on int8 kernels. ``"auto"`` (default): uint8 at 64x44 or with 8-bit activation
grids, float otherwise (at 4-bit grids the 1/510 error moves activations across thresholds: W4A4 cosine 0.9895), and
float whenever the first conv has integer weights above 64 (8-bit weights): silhouette levels up to 255 then overflow
the int16 pair sums of ONNX Runtime's u8s8 kernels on CPUs without VNNI (W8A8 cosine 0.908), see
:func:`resolve_first_input`; the export report lists the other convs at risk (:func:`saturation_risk`).
"""

from __future__ import annotations

from collections.abc import Sequence

from .fold import ConvSpec

__all__ = ["INT16_PAIR_LIMIT", "STORED_FRAME_SIZE", "saturation_risk", "resolve_first_input"]

STORED_FRAME_SIZE = (64, 44)
"""Stored frames are ``k / 255`` at this size: a uint8 first input at 1/255 is exact only here."""


INT16_PAIR_LIMIT = 32767
"""ONNX Runtime's u8s8 kernels on CPUs without VNNI (AVX2) add pairs of ``u8 * s8`` products in saturating int16
(``vpmaddubsw``): a layer is safe when ``2 * max input level * max |weight level| <= 32767``."""


def saturation_risk(specs: dict[str, ConvSpec], first_input: str) -> list[str]:
    """Names of the quantized convs whose uint8 input levels and int8 weights can overflow the int16 pair sums of
    ONNX Runtime's non-VNNI u8s8 kernels (:data:`INT16_PAIR_LIMIT`); ``first_input`` ``"uint8"``: the exact-input
    conv reads levels up to 255."""
    risky = []
    for name, s in specs.items():
        if not s.quantized:
            continue
        if s.act is not None:
            top = s.act.q_p + (128 if s.act.signed else 0)  # signed grids are stored as uint8 + 128
        elif first_input == "uint8":
            top = 255
        else:
            continue
        if 2 * top * int(s.w_int.abs().max()) > INT16_PAIR_LIMIT:
            risky.append(name)
    return risky


def resolve_first_input(first_input: str, input_size: Sequence[int], low_bit_acts: bool = True,
                        first_weight_max: int | None = None) -> str:
    """``"auto"`` -> ``"uint8"`` when the model takes the stored 64x44 frames (the 1/255 grid is exact) or when
    every activation grid is 8-bit (``low_bit_acts=False``: a 1/510 input error is small against them), and the
    first conv's largest integer weight ``first_weight_max`` is at most 64; else ``"float"``. A resized frame is
    off the 1/255 grid, and at 4-bit activations rounding it costs parity (W4A4 CPU recipe: cosine 0.9895 with a
    uint8 first input, 0.99998 float). Above 64 the silhouette levels (up to 255) overflow the int16 pair sums of
    ONNX Runtime's u8s8 kernels on CPUs without VNNI (:data:`INT16_PAIR_LIMIT`): W8A8 CPU recipe with 8-bit
    first-conv weights, cosine 0.908 with a uint8 first input, 0.99990 float (``python scripts/ptq_first_conv.py``).

    Raises:
        ValueError: ``first_input`` not ``"auto"``, ``"uint8"`` or ``"float"``.
    """
    if first_input == "auto":
        exact = tuple(int(v) for v in input_size) == STORED_FRAME_SIZE
        safe = first_weight_max is None or 2 * 255 * int(first_weight_max) <= INT16_PAIR_LIMIT
        return "uint8" if (exact or not low_bit_acts) and safe else "float"
    if first_input not in ("uint8", "float"):
        raise ValueError(f"first_input must be 'auto', 'uint8' or 'float', got {first_input!r}")
    return first_input
