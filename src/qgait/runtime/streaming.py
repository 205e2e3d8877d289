"""Streaming embedding: update a sequence's embedding one frame at a time (issue 17).

GaitBase pools over time with a max over frames (:class:`qgait.models.blocks.TemporalMaxPool`) after a per-frame
backbone, so the embedding of frames ``1..t`` is ``head(max_{i<=t} backbone(frame_i))``: a new frame costs one
frame through the backbone plus an element-wise max, and the head (pyramid pooling + per-part FCs) runs only when
an embedding is asked for. The result equals the whole-sequence embedding of the same frames up to float rounding
(the backbone sees the same frames; max is exact).

Two backends, one interface (:class:`StreamingEmbedder`):

- an exported ONNX model (FP32 or int8 QDQ, ``.onnx`` or packed ``.qgpack``): the graph is cut at its temporal
  max (:func:`split_at_temporal_pool`) into a frame graph ``silhouettes [n, T, h, w] -> features [n, T, c, h', w']``
  and a head graph ``pooled [n, c, h', w'] -> embeddings [n, c_e, p]``, each run by ONNX Runtime;
- a PyTorch model with GaitBase's structure (``backbone``, ``temporal_pool`` a ``TemporalMaxPool``, ``hpp``,
  ``fcs``), full precision or fake-quantized.

Example::

    s = StreamingEmbedder.from_onnx("model.int8.onnx")
    for frame in camera:                   # uint8 [64, 64] or [64, 44], or float [h, w] in [0, 1]
        s.push(frame)
        if s.frames >= 10:
            print(identify(s.embedding(), gallery, top_k=1))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .embedder import ModelLoadError, ort_session, prepare_silhouettes

__all__ = ["StreamingEmbedder", "split_at_temporal_pool", "TemporalSplitError"]


class TemporalSplitError(ModelLoadError):
    """A model that cannot be streamed: no single max over the frame axis between a per-frame part and a head."""


# ------------------------------------------------------------------------------------------ ONNX graph split
def _const_ints(model, name: str) -> list[int] | None:
    import onnx
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return [int(v) for v in numpy_helper.to_array(a.t).reshape(-1)]
                if a.name in ("value_ints", "value_int"):
                    v = onnx.helper.get_attribute_value(a)
                    return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    return None


def _temporal_max_node(model):
    """The ReduceMax over axis 1 (frames) without keepdims whose input comes from the graph input; exactly one."""
    import onnx

    found = []
    for node in model.graph.node:
        if node.op_type != "ReduceMax":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = list(attrs["axes"]) if "axes" in attrs else (
            _const_ints(model, node.input[1]) if len(node.input) > 1 and node.input[1] else None)
        if axes == [1] and attrs.get("keepdims", 1) == 0:
            found.append(node)
    if len(found) != 1:
        raise TemporalSplitError(f"expected one max over the frame axis (ReduceMax axes=[1], keepdims=0), found "
                                 f"{len(found)}: this model does not pool frames with a max (GaitBase does)")
    return found[0]


def _temporal_mixing_nodes(model) -> list[str]:
    """Names of convolution / pooling nodes with 3D kernels (they mix neighbouring frames)."""
    import onnx

    inits = {i.name: len(i.dims) for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        ks = attrs.get("kernel_shape")
        w = node.input[3] if node.op_type == "QLinearConv" else (node.input[1] if len(node.input) > 1 else "")
        if (ks is not None and len(ks) >= 3) or inits.get(w, 0) >= 5:
            out.append(node.name or node.output[0])
    return out


def split_at_temporal_pool(model) -> tuple[Any, Any]:
    """Cut a gait model's ONNX graph at its temporal max pooling.

    Args:
        model: an ``onnx.ModelProto`` ``silhouettes [n, T, h, w] -> embeddings [n, c, p]`` (qgait export: FP32 or
            int8 QDQ) whose frames meet in one ``ReduceMax`` over axis 1.

    Returns:
        ``(frames, head)``: ``frames`` maps ``silhouettes [n, T, h, w] -> [n, T, c, h', w']`` (the per-frame
        features the max pools), ``head`` maps the pooled ``[n, c, h', w'] -> embeddings [n, c, p]``; input and
        output names are those of the original graph's tensors.

    Raises:
        TemporalSplitError: no single temporal max, the graph does not fall apart into the two parts there (a
            node after the max also reads the per-frame tensors), or the part before it mixes frames (3D kernels).
    """
    import onnx
    from onnx.utils import Extractor

    node = _temporal_max_node(model)
    feats, pooled = node.input[0], node.output[0]
    inferred = onnx.shape_inference.infer_shapes(model)
    ex = Extractor(inferred)
    in_name, out_name = model.graph.input[0].name, model.graph.output[0].name
    try:
        frames = ex.extract_model([in_name], [feats])
        head = ex.extract_model([pooled], [out_name])
    except Exception as exc:  # noqa: BLE001 - onnx raises plain exceptions for unreachable tensors
        raise TemporalSplitError(f"cannot cut the graph at {node.name or pooled!r}: {exc}") from exc
    if any(i.name == in_name for i in head.graph.input):
        raise TemporalSplitError("the head after the temporal max also reads the silhouettes: not streamable")
    mixing = _temporal_mixing_nodes(frames)
    if mixing:
        raise TemporalSplitError(f"the part before the temporal max mixes frames ({', '.join(mixing[:3])}: 3D "
                                 "kernels): a running max of single frames would not equal it (DeepGaitV2 is not "
                                 "streamable; GaitBase is)")
    for m in (frames, head):
        m.ClearField("metadata_props")
        for imp in model.opset_import:  # extract_model keeps the opsets; make sure the domains are all there
            if not any(o.domain == imp.domain for o in m.opset_import):
                m.opset_import.append(imp)
    return frames, head


# ------------------------------------------------------------------------------------------ the embedder
class StreamingEmbedder:
    """A running embedding of one frame stream (or ``n`` synchronous streams): :meth:`push` frames as they arrive,
    :meth:`embedding` at any moment, :meth:`reset` for a new sequence. Build it with :meth:`from_onnx` or
    :meth:`from_torch`.

    Frames are prepared as :func:`qgait.runtime.embedder.prepare_silhouettes` prepares whole sequences: uint8
    ``[64, 64]`` / ``[64, 44]`` raw frames (cut and resized as in training) or float ``[h, w]`` silhouettes in
    [0, 1] at the model's input size; a push may carry several frames (``[k, H, W]``) or several streams
    (``[n, k, H, W]``, ``n`` fixed from the first push on).

    Attributes:
        input_size: the model's ``(h, w)``.
        frames: frames pushed since the last reset.
    """

    def __init__(self, frame_fn, head_fn, input_size: tuple[int, int], backend: str) -> None:
        self._frame_fn, self._head_fn = frame_fn, head_fn
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.backend = backend
        self.reset()

    # -------------------------------------------------------------- construction
    @classmethod
    def from_onnx(cls, path: str | Path, threads: int | None = 1,
                  providers: Sequence[str] | None = None) -> StreamingEmbedder:
        """From an exported model (``.onnx`` FP32 / int8 QDQ, or a packed ``.qgpack``), cut at its temporal max.

        ``threads``: ONNX Runtime intra-op threads, default 1: a single frame is too little work to split, and on a
        2-core CPU two threads made a full-GaitBase int8 push 2.9x slower (15.2 against 5.2 ms,
        ``results/bench/streaming_2026-12-04_*``); None takes ONNX Runtime's default (every core).

        Raises:
            ModelLoadError: missing or unreadable file. TemporalSplitError: the model has no temporal max.
        """
        import onnx

        from ..export.int4 import PackedModelError, is_packed_file, load_packed

        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file not found")
        try:
            model = load_packed(path) if is_packed_file(path) else onnx.load(str(path))
        except PackedModelError as exc:
            raise ModelLoadError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others
            raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
        shape = [d.dim_value if d.HasField("dim_value") else None
                 for d in model.graph.input[0].type.tensor_type.shape.dim]
        if len(shape) != 4 or not shape[2] or not shape[3]:
            raise ModelLoadError(f"{path}: input {shape} is not silhouettes [n, T, h, w] with a fixed frame size")
        try:
            frames, head = split_at_temporal_pool(model)
        except TemporalSplitError as exc:
            raise TemporalSplitError(f"{path}: {exc}") from exc
        fs, hs = (ort_session(m.SerializeToString(), threads, providers) for m in (frames, head))
        f_in, f_out = fs.get_inputs()[0].name, fs.get_outputs()[0].name
        h_in, h_out = hs.get_inputs()[0].name, hs.get_outputs()[0].name

        def frame_fn(x: np.ndarray) -> np.ndarray:  # [n, k, h, w] -> [n, c, h', w'] (max over the k frames)
            return fs.run([f_out], {f_in: x})[0].max(axis=1)

        def head_fn(pooled: np.ndarray) -> np.ndarray:
            return hs.run([h_out], {h_in: pooled})[0]

        return cls(frame_fn, head_fn, (shape[2], shape[3]), "onnx")

    @classmethod
    def from_torch(cls, model: nn.Module, input_size: tuple[int, int]) -> StreamingEmbedder:
        """From a PyTorch model with GaitBase's structure (full precision or fake-quantized; put in eval mode).

        Raises:
            TemporalSplitError: the model lacks ``backbone`` / ``hpp`` / ``fcs`` or pools frames otherwise than
                with :class:`~qgait.models.blocks.TemporalMaxPool`.
        """
        from ..models.blocks import TemporalMaxPool

        missing = [a for a in ("backbone", "temporal_pool", "hpp", "fcs") if not hasattr(model, a)]
        if missing or not isinstance(model.temporal_pool, TemporalMaxPool):
            raise TemporalSplitError(f"{type(model).__name__} cannot be streamed: it needs a per-frame backbone, a "
                                     "TemporalMaxPool and a head (hpp, fcs), as GaitBase has"
                                     + (f"; missing {missing}" if missing else ""))
        model.eval()

        @torch.no_grad()
        def frame_fn(x: np.ndarray) -> np.ndarray:
            f = model.backbone(torch.from_numpy(x).unsqueeze(2))  # [n, k, c, h', w']
            return f.amax(dim=1).float().numpy()

        @torch.no_grad()
        def head_fn(pooled: np.ndarray) -> np.ndarray:
            return model.fcs(model.hpp(torch.from_numpy(pooled))).float().numpy()

        return cls(frame_fn, head_fn, input_size, "torch")

    # -------------------------------------------------------------- streaming
    def reset(self) -> None:
        """Forget the frames pushed so far (a new sequence)."""
        self._pooled: np.ndarray | None = None
        self._embedding: np.ndarray | None = None
        self.frames = 0

    def push(self, frames: Any) -> int:
        """Add one frame ``[H, W]``, several ``[k, H, W]`` or several per stream ``[n, k, H, W]``; returns the
        number of frames pushed since the last reset.

        Raises:
            ValueError: a frame that :func:`prepare_silhouettes` refuses, or a stream count that differs from the
                first push's.
        """
        arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if arr.ndim == 2:
            arr = arr[None]
        x = prepare_silhouettes(arr, self.input_size)  # [n, k, h, w]
        pooled = self._frame_fn(x)
        if self._pooled is None:
            self._pooled = pooled
        else:
            if pooled.shape != self._pooled.shape:
                raise ValueError(f"push of {x.shape[0]} stream(s); this stream has {self._pooled.shape[0]} (reset() "
                                 "to start anew)")
            np.maximum(self._pooled, pooled, out=self._pooled)
        self._embedding = None
        self.frames += x.shape[1]
        return self.frames

    def embedding(self) -> np.ndarray:
        """The embedding ``float32 [n, c, p]`` of all frames pushed since the last reset (cached until the next
        push).

        Raises:
            ValueError: no frame pushed yet.
        """
        if self._pooled is None:
            raise ValueError("no frames pushed yet: push(frame) first")
        if self._embedding is None:
            self._embedding = np.ascontiguousarray(self._head_fn(self._pooled), dtype=np.float32)
        return self._embedding

    def __repr__(self) -> str:
        return f"StreamingEmbedder({self.backend}, input {self.input_size}, {self.frames} frames)"
