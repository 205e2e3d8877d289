"""Data layer: safe loading of OpenGait pickles, packed sequence stores, partitions, pretreatment, sampling,
batched transforms and training / test loaders.

Modules (data flows top to bottom):

* :mod:`~qgait.data.safe_pickle` -- ``load_array``: numpy arrays only, never executes pickled code.
* :mod:`~qgait.data.sources` -- ``iter_sequences`` over OpenGait folders or ``.tar.xz`` archives.
* :mod:`~qgait.data.store` -- ``build_store`` / ``StoreWriter`` / ``SequenceStore`` (memory-mapped frames).
* :mod:`~qgait.data.pretreat` -- raw PNG silhouettes to ``[T, 64, 64]`` sequences and a store.
* :mod:`~qgait.data.partition` -- train / test subject sets (``load_partition("casia-b")``).
* :mod:`~qgait.data.sampling` -- P x K ``TripletSampler``, frame sampling.
* :mod:`~qgait.data.transforms` -- ``to_model_input``, ``GaitAugment`` (torch, batched).
* :mod:`~qgait.data.loader` -- ``TrainBatches``, ``iter_test_sequences``.

The numpy-only names are re-exported here; import ``transforms`` and ``loader`` (torch) from their modules.
"""

from .errors import BadSequenceError
from .partition import Partition, check_subjects, load_partition, outside
from .safe_pickle import UnsafePickleError, load_array
from .sampling import TripletSampler, ordered_frames, sample_frames, shard
from .sources import RawSequence, SequenceKey, iter_sequences, validate_frames
from .store import ImportSummary, SequenceRecord, SequenceStore, StoreError, StoreWriter, build_store

__all__ = [
    "BadSequenceError", "UnsafePickleError", "load_array",
    "SequenceKey", "RawSequence", "validate_frames", "iter_sequences",
    "SequenceRecord", "ImportSummary", "StoreWriter", "StoreError", "SequenceStore", "build_store",
    "Partition", "load_partition", "check_subjects", "outside",
    "TripletSampler", "shard", "sample_frames", "ordered_frames",
]
