"""Is a uint8 sequence a plausible silhouette sequence? A cheap check for user data before it is embedded and
named as someone (``qgait embed / identify``): an empty, noisy, grey (photo) or inverted sequence gets an embedding
and a nearest subject like any other, so it is refused with the reason instead.

The thresholds sit far outside what real silhouettes give. Over 400 random CASIA-B sequences (OpenGait
pretreatment, 64x44 cut): person pixels (>= 128) 13.8-23.7% of the frame, grey pixels (32-223, the resize's
anti-aliased edges) 1.3-2.8%, silhouette boundary length per person pixel 0.20-0.48. Uniform noise gives 50%,
75% and 2.0; a grey photograph 34%, 90% and 0.4; random binary noise 50%, 0% and 2.0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_PERSON", "MAX_PERSON", "MAX_GREY", "MAX_BOUNDARY", "silhouette_problem"]

MIN_PERSON = 0.01
"""Below this fraction of person pixels (>= 128) over the sequence, it is empty."""
MAX_PERSON = 0.6
"""Above it, the frames are mostly foreground: inverted (a dark person on white) or not a mask."""
MAX_GREY = 0.15
"""Above this fraction of grey pixels (32..223), the frames are a grey or colour image, not a binary mask."""
MAX_BOUNDARY = 1.2
"""Above this ratio of person/background transitions (horizontal and vertical neighbours) to person pixels, the
foreground is scattered dots (noise), not a body."""


def silhouette_problem(frames: np.ndarray) -> str | None:
    """Why uint8 ``frames [T, H, W]`` (0 background, 255 person) do not look like a silhouette sequence, or None.

    Sequence-level statistics (an occasional empty frame is fine): the fraction of person pixels, of grey pixels,
    and the boundary length per person pixel (module docstring).
    """
    f = np.asarray(frames)
    if f.dtype != np.uint8 or f.ndim != 3 or f.size == 0:
        return None  # shape and dtype are checked (and explained) where the frames are read
    person = f >= 128
    share = float(person.mean())
    if share < MIN_PERSON:
        if 0 < int(f.max()) <= 1:
            return "its values are 0/1; silhouettes are stored as 0 (background) and 255 (person)"
        return f"empty: {100 * share:.2f}% of its pixels are person pixels (>= 128), the frames are (almost) black"
    grey = float(((f > 31) & (f < 224)).mean())
    if grey > MAX_GREY:
        return (f"not a binary silhouette mask: {100 * grey:.0f}% of its pixels are grey (32..223); a grey or colour "
                "image rather than a segmented person")
    if share > MAX_PERSON:
        return (f"{100 * share:.0f}% of its pixels are person pixels (>= 128): inverted (a black person on white) or "
                "not a silhouette mask")
    p = person.astype(np.int8)
    boundary = float(np.abs(np.diff(p, axis=1)).sum() + np.abs(np.diff(p, axis=2)).sum()) / max(1, int(person.sum()))
    if boundary > MAX_BOUNDARY:
        return (f"noise-like: its person pixels are scattered ({boundary:.1f} boundary transitions per person pixel, "
                "a body gives well under 1)")
    return None
