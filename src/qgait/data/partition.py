"""Train / test subject partitions in OpenGait's JSON format.

A partition file is ``{"TRAIN_SET": [...], "TEST_SET": [...]}`` with subject ids as strings, plus an optional
``"PROBE_SET"`` (Gait3D lists its probe sequences there) and an optional ``"SOURCE"`` object recording where the
lists were taken from (repository, path, commit, note). Built-in partitions are loaded by name:

=============  ==========================  ==========================================================================
name           file                        contents (source: OpenGait's ``datasets/<Name>/<Name>.json``, see SOURCE)
=============  ==========================  ==========================================================================
``casia-b``    CASIA-B.json                train 001-074, test 075-124 (the 74 / 50 split; see below)
``oumvlp``     OU-MVLP.json                train odd ids 00001-10305 (5153), test even ids 00002-10306 + 10307 (5154)
``grew``       GREW.json                   train 00001train-20000train, test 00001-06000 + ``probe`` (unlabelled probes)
``gait3d``     Gait3D.json                 train 3000 ids, test 1000 ids, PROBE_SET 1000 probe sequences
``ccpg``       CCPG.json                   train 000-099, test 100-199
``sustech1k``  SUSTech1K.json              train 250 ids, test 800 ids
=============  ==========================  ==========================================================================

CASIA-B is the exception: OpenGait's ``datasets/CASIA-B/CASIA-B.json`` (ShiqiYu/OpenGait @ 28f5041) leaves subject
005 out of TRAIN_SET (73 ids, 1896 characters; its TEST_SET is 075-124 as here), and OpenGait's issue #60 points to a
``CASIA-B_include_005.json`` beside it (not in the stored copy, not read). ``casia-b`` keeps 005: the 74 / 50 split
the project's CASIA-B recipes, zoo and results use.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["Partition", "BUILTIN_PARTITIONS", "load_partition", "check_subjects", "outside"]

BUILTIN_PARTITIONS = {
    "casia-b": "CASIA-B.json",
    "oumvlp": "OU-MVLP.json",
    "ou-mvlp": "OU-MVLP.json",
    "grew": "GREW.json",
    "gait3d": "Gait3D.json",
    "ccpg": "CCPG.json",
    "sustech1k": "SUSTech1K.json",
}
"""Names accepted by :func:`load_partition` (case-insensitive) and their files in ``qgait/data/partitions``."""

_KEYS = {"TRAIN_SET": "train", "TEST_SET": "test", "PROBE_SET": "probe", "SOURCE": "provenance"}


@dataclass
class Partition:
    """Subject ids (strings, e.g. ``"075"``) of the training and test sets.

    Attributes:
        train: training subjects, in file order.
        test: test subjects, in file order; disjoint from ``train``.
        probe: ``PROBE_SET`` when the file has one (dataset-specific, e.g. Gait3D probe sequences), else None.
        source: the file it was read from.
        provenance: the file's ``SOURCE`` object (where the lists come from: repository, path, commit, note),
            or None.
    """

    train: list[str]
    test: list[str]
    probe: list[str] | None = None
    source: str = ""
    provenance: dict | None = None


def _id_list(value: object, key: str, origin: str) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"{origin}: {key} must be a list of subject ids, got {type(value).__name__}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ValueError(f"{origin}: {key} holds {v!r} ({type(v).__name__}), expected subject id strings")
        if isinstance(v, int):
            raise ValueError(f"{origin}: {key} holds the number {v}; write subject ids as strings as in the "
                             f"folder names (e.g. \"{v:03d}\")")
        out.append(v)
    dup = sorted({v for v in out if out.count(v) > 1}) if len(set(out)) != len(out) else []
    if dup:
        raise ValueError(f"{origin}: {key} lists {', '.join(dup[:10])} more than once")
    return out


def load_partition(path_or_name: str | Path) -> Partition:
    """Read a partition file, or a built-in partition by name (``"casia-b"``, ``"oumvlp"``, ``"grew"``,
    ``"gait3d"``, ``"ccpg"``, ``"sustech1k"``: see the module docstring).

    Args:
        path_or_name: a JSON file path, or a name in :data:`BUILTIN_PARTITIONS` (case-insensitive).

    Returns:
        The :class:`Partition`.

    Raises:
        FileNotFoundError: neither a built-in name nor an existing file.
        ValueError: invalid JSON; not an object; unknown keys (named); SOURCE not an object; TRAIN_SET or
            TEST_SET missing; an
            entry that is not a string; duplicates; a subject in both TRAIN_SET and TEST_SET (listed).
            Every message names the file.
    """
    name = str(path_or_name)
    builtin = BUILTIN_PARTITIONS.get(name.lower()) if not isinstance(path_or_name, Path) else None
    if builtin is not None:
        ref = resources.files("qgait.data").joinpath("partitions", builtin)
        origin, text = f"built-in partition {name!r} ({builtin})", ref.read_text(encoding="utf-8")
    else:
        path = Path(path_or_name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such partition file (built-in names: "
                                    f"{', '.join(sorted(BUILTIN_PARTITIONS))})")
        origin, text = str(path), path.read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{origin}: invalid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{origin}: expected a JSON object with TRAIN_SET and TEST_SET, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_KEYS))
    if unknown:
        raise ValueError(f"{origin}: unknown key(s) {', '.join(map(repr, unknown))}; expected "
                         f"{', '.join(_KEYS)}")
    missing = [k for k in ("TRAIN_SET", "TEST_SET") if k not in obj]
    if missing:
        raise ValueError(f"{origin}: missing {' and '.join(missing)}")
    train = _id_list(obj["TRAIN_SET"], "TRAIN_SET", origin)
    test = _id_list(obj["TEST_SET"], "TEST_SET", origin)
    probe = _id_list(obj["PROBE_SET"], "PROBE_SET", origin) if "PROBE_SET" in obj else None
    provenance = obj.get("SOURCE")
    if provenance is not None and not isinstance(provenance, dict):
        raise ValueError(f"{origin}: SOURCE must be an object (repository, path, commit, note), got "
                         f"{type(provenance).__name__}")
    both = sorted(set(train) & set(test))
    if both:
        shown = ", ".join(both[:20]) + (f", ... ({len(both)} in all)" if len(both) > 20 else "")
        raise ValueError(f"{origin}: {len(both)} subject(s) in both TRAIN_SET and TEST_SET: {shown}")
    return Partition(train=train, test=test, probe=probe, source=origin, provenance=provenance)


def check_subjects(partition: Partition, store_subjects: Iterable[str], which: str = "train") -> list[str]:
    """Check that the store holds every subject of the chosen set.

    Args:
        partition: the partition.
        store_subjects: subject ids present in the store.
        which: ``"train"``, ``"test"`` or ``"all"`` (both).

    Returns:
        The chosen set's subjects, sorted.

    Raises:
        ValueError: ``which`` unknown, or subjects of the set absent from the store (listed, with the file).
    """
    sets = {"train": partition.train, "test": partition.test, "all": partition.train + partition.test}
    if which not in sets:
        raise ValueError(f"which={which!r}: expected one of {', '.join(sets)}")
    wanted = sorted(set(sets[which]))
    have = set(store_subjects)
    missing = [s for s in wanted if s not in have]
    if missing:
        shown = ", ".join(missing[:20]) + (f", ... ({len(missing)} in all)" if len(missing) > 20 else "")
        raise ValueError(f"{partition.source or 'partition'}: {len(missing)} {which} subject(s) missing from the "
                         f"store: {shown}")
    return wanted


def outside(partition: Partition, subjects: Collection[str]) -> list[str]:
    """Subjects in neither the train nor the test set of ``partition``, sorted (e.g. store subjects that a
    run would silently ignore)."""
    known = set(partition.train) | set(partition.test)
    return sorted({s for s in subjects if s not in known})
