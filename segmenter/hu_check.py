"""Does a decoded volume look like a head CT in Hounsfield units?

Broken pixel data decodes without error: signed values stored with PixelRepresentation 0 put
air at +64536, a RescaleSlope of 0 maps every pixel to the intercept, a wrong intercept
shifts everything.  Analysing such a volume gives garbage, and garbage can read as "no
bleed".  So before analysis every series must show what every head CT shows: air around the
head, soft tissue, brain-range values and some bone, and next to nothing beyond the range a
CT reconstructs.  A series that does not is refused with the measured shares in the reason.

The limits are loose on purpose: a thin slab through the vertex or the skull base, a small
field of view or a child's head still passes by a wide margin.
"""
from __future__ import annotations

import numpy as np

#: (name, low HU, high HU, least share of voxels, what it is) that every head CT must show.
REQUIRED_BANDS = (
    ("air", -np.inf, -500.0, 0.02, "air around the head"),
    ("soft tissue", -100.0, 100.0, 0.02, "scalp, brain and fluid"),
    ("brain", 10.0, 60.0, 0.005, "brain parenchyma"),
    ("bone", 300.0, np.inf, 0.001, "skull"),
)
#: Values above this are beyond what a CT reconstructs (metal streaks aside).
MAX_PLAUSIBLE_HU = 4000.0
#: Largest share of voxels allowed above ``MAX_PLAUSIBLE_HU``.
MAX_IMPLAUSIBLE_SHARE = 0.01
#: Pixels kept per row when sampling: plenty to measure shares of this size.
_SAMPLE_PX = 128


def sample_stride(rows: int, cols: int) -> int:
    """Pixel step of the sample ``hu_problem`` measures; a slice sampled with it keeps at least
    ``_SAMPLE_PX`` pixels a side, so ``hu_problem`` of a stack of samples measures them all."""
    return max(1, min(rows, cols) // _SAMPLE_PX)


def hu_problem(volume_hu: np.ndarray) -> str | None:
    """Reason the volume does not look like a head CT in HU, or None when it does."""
    volume_hu = np.asarray(volume_hu)
    stride = sample_stride(*volume_hu.shape[-2:])
    sample = volume_hu[:, ::stride, ::stride]
    if sample.size == 0:
        return "pixel data is empty"
    lo, hi = float(sample.min()), float(sample.max())
    hint = "the pixel data, PixelRepresentation or RescaleSlope/RescaleIntercept may be wrong"
    if hi - lo < 200.0:
        return f"pixel values are almost constant ({lo:.0f} to {hi:.0f} HU): {hint}"
    too_high = float(np.mean(sample > MAX_PLAUSIBLE_HU))
    if too_high > MAX_IMPLAUSIBLE_SHARE:
        return (f"{too_high:.1%} of voxels are above {MAX_PLAUSIBLE_HU:.0f} HU, which no head CT "
                f"shows: {hint}")
    for name, low, high, least, what in REQUIRED_BANDS:
        share = float(np.mean((sample >= low) & (sample < high)))
        if share < least:
            band = f"below {high:.0f} HU" if low == -np.inf else f"above {low:.0f} HU" if high == np.inf \
                else f"{low:.0f} to {high:.0f} HU"
            return (f"does not look like a head CT in HU: {share:.2%} of voxels are {name} ({band}; "
                    f"{what}), at least {least:.0%} expected; {hint}")
    return None
