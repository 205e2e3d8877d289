"""Packed 4-bit weight storage: two weights per byte, and a file format that restores the ONNX model.

No CPU runtime here computes convolutions below 8 bits (gait-protocols.md, "Deployment facts"): a 4-bit model runs
on int8 kernels, its weights stored in the ONNX file as int8 values on the 4-bit grid. Packing is the size win:
:func:`save_packed` writes the ONNX model with every <= 4-bit weight initializer replaced by its packed nibbles, and
:func:`load_packed` restores the exact ONNX model (bit-identical initializers) for ONNX Runtime.

Nibble layout (:func:`pack_int4`): values in ``[-8, 7]`` as 4-bit two's complement, element ``2i`` in the low nibble
of byte ``i``, element ``2i + 1`` in the high nibble; an odd count is padded with a zero nibble.

Batch-norm folding negates the integer weights of channels whose BN factor is negative (:mod:`qgait.export.fold`),
which maps the grid ``[-8, 7]`` to ``[-7, 8]``: the packed format stores such channels un-negated plus a per-channel
sign, so every stored nibble stays on ``[-8, 7]``. The ``QLinearConv`` export's bias matching stores some channels
as ``w_int * k`` (:func:`qgait.export.bias_match.quantize_conv_biases`): those are stored divided by the gcd of
their values, with the factor per channel in the header (``multipliers``), and restored exactly.

File layout (``.qgpack``)::

    b"QGAITPK1" | uint64 little-endian header length | header JSON (utf-8) | ONNX model bytes | packed blobs

The header lists each packed initializer (``name``, ``dims``, ``offset`` and ``nbytes`` in the blob area,
``negated`` channel indices) and the CRC-32 of everything after it, so a truncated or corrupt file is an error
naming the file, never a silently wrong model.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

__all__ = ["PackedModelError", "pack_int4", "unpack_int4", "save_packed", "load_packed", "packable_initializers"]

MAGIC = b"QGAITPK1"
FORMAT_VERSION = 1


class PackedModelError(ValueError):
    """A packed model file that is missing, truncated, corrupt or not of this format (the message names it)."""


def _as_int_array(values) -> np.ndarray:
    try:
        import torch

        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"pack_int4 needs an integer array, got dtype {arr.dtype}")
    return arr.reshape(-1).astype(np.int16)


def pack_int4(values) -> bytes:
    """Pack integers in ``[-8, 7]`` (numpy or torch, any shape, flattened in C order) two per byte.

    Returns:
        ``ceil(n / 2)`` bytes (see the module docstring for the nibble layout).

    Raises:
        TypeError: not an integer array. ValueError: a value outside ``[-8, 7]``.
    """
    v = _as_int_array(values)
    if v.size and (v.min() < -8 or v.max() > 7):
        raise ValueError(f"pack_int4: values must be in [-8, 7], got range [{int(v.min())}, {int(v.max())}]")
    nib = (v & 0xF).astype(np.uint8)
    if nib.size % 2:
        nib = np.concatenate([nib, np.zeros(1, np.uint8)])
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_int4(data: bytes | bytearray | memoryview, shape: int | tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_int4`: int8 array of ``shape`` (an int: a flat count) with values in ``[-8, 7]``.

    Raises:
        ValueError: ``data`` has not exactly ``ceil(n / 2)`` bytes for the ``n`` elements of ``shape``.
    """
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.frombuffer(bytes(data), dtype=np.uint8)
    if raw.size != (n + 1) // 2:
        raise ValueError(f"unpack_int4: {raw.size} bytes cannot hold exactly {n} 4-bit values")
    nib = np.empty(raw.size * 2, dtype=np.uint8)
    nib[0::2] = raw & 0xF
    nib[1::2] = raw >> 4
    vals = nib[:n].astype(np.int8)
    vals[vals > 7] -= 16
    return vals.reshape(shape)


def packable_initializers(model: onnx.ModelProto) -> list[str]:
    """Names of the weight initializers of <= 4-bit layers, from the ``qgait`` export metadata."""
    from .onnx_export import read_qgait_metadata

    meta = read_qgait_metadata(model)
    return [row["weight_initializer"] for row in meta.get("layers", [])
            if row.get("quantized") and row.get("weight_bits") is not None and row["weight_bits"] <= 4
            and row.get("weight_storage", "int8") == "int8"]


def save_packed(model: onnx.ModelProto | str | Path, path: str | Path, names: list[str] | None = None) -> dict:
    """Write ``model`` with its <= 4-bit weight initializers packed two per byte.

    Args:
        model: an ONNX model (or its file) exported by :func:`qgait.export.export_qdq`.
        path: the packed file to write (``.qgpack``).
        names: initializers to pack (default: :func:`packable_initializers`).

    Returns:
        ``{"path", "bytes", "onnx_bytes", "packed_initializers", "packed_weights"}`` (``onnx_bytes``: the size of
        the plain ONNX model).

    Raises:
        ValueError: no initializer to pack; a named initializer is missing, not int8, or has a channel that is
            off the 4-bit grid (neither ``[-8, 7]`` nor its negation).
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    names = packable_initializers(model) if names is None else list(names)
    if not names:
        raise ValueError("no <= 4-bit weight initializers to pack (export a model quantized at <= 4 bits)")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    entries, blobs, offset, count = [], [], 0, 0
    for name in names:
        if name not in inits:
            raise ValueError(f"initializer {name!r} not in the model")
        init = inits[name]
        if init.data_type != TensorProto.INT8:
            raise ValueError(f"initializer {name!r} is not int8")
        arr = numpy_helper.to_array(init).astype(np.int16)
        rows = arr.reshape(arr.shape[0], -1)
        # channels stored as w_int * k by the bias matching of the QLinearConv export: divide by their gcd
        mult = np.ones(rows.shape[0], np.int16)
        off = ~((rows >= -8).all(1) & (rows <= 8).all(1))
        for c in np.flatnonzero(off):
            mult[c] = max(int(np.gcd.reduce(np.abs(rows[c]))), 1)
        rows = rows // mult[:, None]
        on_grid = (rows >= -8).all(1) & (rows <= 7).all(1)
        neg_grid = (rows >= -7).all(1) & (rows <= 8).all(1)
        negate = ~on_grid & neg_grid
        if not (on_grid | neg_grid).all():
            bad = int(np.flatnonzero(~(on_grid | neg_grid))[0])
            raise ValueError(f"initializer {name!r}: channel {bad} is not on a 4-bit grid")
        rows = np.where(negate[:, None], -rows, rows)
        blob = pack_int4(rows)
        multiplied = np.flatnonzero(mult > 1)
        entries.append({"name": name, "dims": list(arr.shape), "offset": offset, "nbytes": len(blob),
                        "negated": np.flatnonzero(negate).tolist(),
                        "multipliers": [[int(c), int(mult[c])] for c in multiplied]})
        blobs.append(blob)
        offset += len(blob)
        count += arr.size
        init.ClearField("raw_data")
        init.ClearField("int32_data")
    onnx_bytes = m.SerializeToString()
    body = onnx_bytes + b"".join(blobs)
    header = json.dumps({"format": "qgait-int4-pack", "version": FORMAT_VERSION, "onnx_bytes": len(onnx_bytes),
                         "blob_bytes": offset, "crc32": zlib.crc32(body), "tensors": entries}).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(header)) + header + body)
    return {"path": str(path), "bytes": path.stat().st_size, "onnx_bytes": len(model.SerializeToString()),
            "packed_initializers": len(entries), "packed_weights": count}


def is_packed_file(path: str | Path) -> bool:
    """True if ``path`` starts with the packed-format magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def load_packed(path: str | Path) -> onnx.ModelProto:
    """Read a file written by :func:`save_packed` and restore the ONNX model (int8 initializers unpacked).

    Raises:
        PackedModelError: missing file, wrong magic, truncated data, CRC mismatch, bad header.
    """
    path = Path(path)
    if not path.is_file():
        raise PackedModelError(f"{path}: packed model file not found")
    data = path.read_bytes()
    if data[: len(MAGIC)] != MAGIC:
        raise PackedModelError(f"{path}: not a qgait packed model (bad magic)")
    try:
        (hlen,) = struct.unpack("<Q", data[len(MAGIC): len(MAGIC) + 8])
        start = len(MAGIC) + 8
        header = json.loads(data[start: start + hlen].decode("utf-8"))
        body = data[start + hlen:]
        if header.get("format") != "qgait-int4-pack" or header.get("version") != FORMAT_VERSION:
            raise PackedModelError(f"{path}: unsupported packed format {header.get('format')!r} "
                                   f"version {header.get('version')!r}")
        if len(body) != header["onnx_bytes"] + header["blob_bytes"]:
            raise PackedModelError(f"{path}: truncated ({len(body)} bytes of payload, expected "
                                   f"{header['onnx_bytes'] + header['blob_bytes']})")
        if zlib.crc32(body) != header["crc32"]:
            raise PackedModelError(f"{path}: corrupt (CRC-32 mismatch)")
        model = onnx.ModelProto()
        model.ParseFromString(body[: header["onnx_bytes"]])
        blobs = body[header["onnx_bytes"]:]
        inits = {i.name: i for i in model.graph.initializer}
        for e in header["tensors"]:
            vals = unpack_int4(blobs[e["offset"]: e["offset"] + e["nbytes"]], tuple(e["dims"]))
            if e["negated"]:
                rows = vals.reshape(vals.shape[0], -1)
                rows[e["negated"]] = -rows[e["negated"]]
            if e.get("multipliers"):
                rows = vals.reshape(vals.shape[0], -1)
                for c, k in e["multipliers"]:
                    if not 1 < int(k) <= 127 or not 0 <= int(c) < rows.shape[0]:
                        raise PackedModelError(f"{path}: bad channel multiplier {c}: {k} in {e['name']!r}")
                    rows[int(c)] = (rows[int(c)].astype(np.int16) * int(k)).astype(np.int8)
            init = inits[e["name"]]
            if list(init.dims) != list(e["dims"]) or init.data_type != TensorProto.INT8:
                raise PackedModelError(f"{path}: initializer {e['name']!r} does not match its header entry")
            init.raw_data = vals.astype(np.int8).tobytes()
    except PackedModelError:
        raise
    except (KeyError, ValueError, TypeError, struct.error, UnicodeDecodeError) as exc:
        raise PackedModelError(f"{path}: corrupt packed model ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # protobuf DecodeError and friends
        raise PackedModelError(f"{path}: corrupt packed model ({type(exc).__name__}: {exc})") from exc
    return model
