"""Runtime: run an exported gait model with ONNX Runtime, build galleries, identify probes.

Public API::

    GaitEmbedder(path, providers=None, threads=None)   # .onnx or packed .qgpack; .embed(frames) -> [n, c, p]
    Gallery(embeddings, labels, info=[])                # .save(npz) / Gallery.load(npz)
    identify(probe_emb, gallery, top_k=5)               # [(label, distance), ...]
    identify_many(probes, gallery, top_k=5)
    ModelLoadError                                      # missing / corrupt / non-gait model file
    StreamingEmbedder.from_onnx(path) / .from_torch(m)  # .push(frame), .embedding() -> [n, c, p], .reset()
"""

from .embedder import (GaitEmbedder, Gallery, ModelLoadError, default_providers, identify, identify_many,
                       prepare_silhouettes)
from .streaming import StreamingEmbedder, TemporalSplitError

__all__ = ["GaitEmbedder", "Gallery", "ModelLoadError", "default_providers", "identify", "identify_many",
           "prepare_silhouettes", "StreamingEmbedder", "TemporalSplitError"]
