"""Runtime: run an exported gait model with ONNX Runtime, build galleries, identify probes.

Public API::

    GaitEmbedder(path, providers=None, threads=None)   # .onnx or packed .qgpack; .embed(frames) -> [n, c, p]
    Gallery(embeddings, labels, info=[])                # .save(npz) / Gallery.load(npz)
    identify(probe_emb, gallery, top_k=5)               # [(label, distance), ...]
    identify_many(probes, gallery, top_k=5)
    ModelLoadError                                      # missing / corrupt / non-gait model file
    StreamingEmbedder.from_onnx(path) / .from_torch(m)  # .push(frame), .embedding() -> [n, c, p], .reset()
    ModelIdentity.of(embedder)                          # what a gallery file records about its model
    enroll(gallery_npz, embedder, sequences, labels)    # create / append (atomic; another model's is refused)
    GalleryIndex(gallery, "flat" | IndexParams(...))    # FAISS candidates + part-distance re-rank: .search(...)
    GalleryFileError, GalleryMismatchError              # corrupt gallery file / gallery of another model
"""

from .embedder import (GaitEmbedder, Gallery, ModelLoadError, default_providers, identify, identify_many,
                       prepare_silhouettes)
from .gallery import enroll
from .gallery_io import GalleryFileError
from .identity import GalleryMismatchError, ModelIdentity
from .index import GalleryIndex, IndexParams
from .streaming import StreamingEmbedder, TemporalSplitError

__all__ = ["GaitEmbedder", "Gallery", "ModelLoadError", "default_providers", "identify", "identify_many",
           "prepare_silhouettes", "StreamingEmbedder", "TemporalSplitError", "GalleryFileError",
           "GalleryIndex", "GalleryMismatchError", "IndexParams", "ModelIdentity", "enroll"]
