"""Head-CT phantoms that look like real scans, with subdural (1) and epidural (2) hematomas.

Unlike ``segmenter.synthetic``, these phantoms have what real axial head CT has and a model
must learn to ignore: the brain touching the inner table with a bright partial-volume band
there (a CSF rim only in a minority of atrophic heads), dense outer and inner tables around
a lower-density diploe, sutures, grey/white contrast with sulci reaching the surface,
ventricles, falx, tentorium, calcifications, skull-base ridges with sinus and mastoid air and
beam-hardening streaks, correlated noise, scalp fat and a curved head holder. SDH and EDH
overlap in size, arc and density and differ only in shape (see ``phantom_ct_lesions``).
Confounders are never labelled: parenchymal bleeds, cortical contusions near (never touching)
the inner table, subarachnoid and intraventricular blood, scalp hematomas outside the skull.

API
---
``generate_ct_phantom(index, seed, kind=None, ranges=None, kind_weights=None) -> Case``
    Phantom ``index`` of the set ``seed``; the same (seed, index, kind, ranges) always gives
    the same volume. ``Case.hu`` float32 (z, y, x) in HU, ``labels`` uint8 0/1/2,
    ``spacing_mm`` (dz, dy, dx).
``iter_ct_phantoms(indices, seed, ranges=None, kinds=None, kind_weights=None, workers=1)``
    Yields those cases in order; ``kinds`` is cycled by index, else kinds are drawn with
    ``kind_weights`` (default ``KINDS``); ``workers > 1`` uses a process pool.
``make_ct_phantom(seed, kind=None, ranges=None, ...) -> CtPhantom``
    The lower level: also returns the drawn parameters (``meta``) and, with
    ``keep_fields=True``, per-voxel tissue maps used by the tests.
``CtPhantomRanges.training()`` / ``.evaluation()`` (wider on every range).
``save_montage(cases, path)``: PNG of middle slices, window 40/80, with label contours.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from scipy import ndimage

from .cases import Case
from .findings import EDH, SDH
from .phantom_ct_head import build_head, suture_code, uniform
from .phantom_ct_lesions import (add_confounders, place_hematomas, place_parafalcine, plan_lesions,
                                 swell_scalp)
from .phantom_ct_tissue import head_holder, paint_brain, paint_skull_and_scalp, paint_skull_base
from .synthetic import KINDS, Range, parse_kind_weights


@dataclass(frozen=True)
class CtPhantomRanges:
    """Sampling ranges (mm, HU, degrees; arcs are half-arcs from the centre to each tip)."""

    pixel_spacing_mm: Range = (0.42, 0.5)
    slice_spacing_mm: Range = (3.0, 5.0)
    n_slices: tuple[int, int] = (24, 36)
    size: tuple[int, int] = (512, 512)
    head_scale: Range = (0.9, 1.06)
    rotation_deg: Range = (-12.0, 12.0)
    offset_mm: Range = (-10.0, 10.0)
    noise_hu: Range = (2.5, 5.5)
    blur_px: Range = (0.6, 1.0)
    partial_volume_mm: Range = (0.35, 0.8)
    skull_mm: Range = (4.5, 7.5)
    atrophy_fraction: float = 0.25
    small_fraction: float = 0.35
    sdh_thickness_mm: Range = (4.0, 20.0)
    sdh_arc_deg: Range = (30.0, 80.0)
    sdh_small_mm: Range = (2.0, 6.0)
    sdh_small_arc_deg: Range = (12.0, 30.0)
    sdh_acute_hu: Range = (50.0, 90.0)
    sdh_subacute_hu: Range = (30.0, 45.0)
    subacute_fraction: float = 0.2
    sdh_falx_fraction: float = 0.15
    edh_thickness_mm: Range = (10.0, 35.0)
    edh_small_mm: Range = (4.0, 10.0)
    edh_hu: Range = (50.0, 90.0)
    fracture_fraction: float = 0.6
    scalp_swelling_fraction: float = 0.5
    scalp_hematoma_fraction: float = 0.15
    confounder_probability: float = 0.2
    iph_radius_mm: Range = (4.0, 20.0)
    iph_hu: Range = (50.0, 85.0)
    #: Cortical contusions stay at least this far below the inner table.
    contusion_gap_mm: float = 1.5

    @classmethod
    def training(cls) -> "CtPhantomRanges":
        return cls()

    @classmethod
    def evaluation(cls) -> "CtPhantomRanges":
        """Wider than training on geometry, acquisition and lesion parameters."""
        return cls(pixel_spacing_mm=(0.38, 0.56), slice_spacing_mm=(2.5, 5.0), n_slices=(20, 40),
                   head_scale=(0.86, 1.1), rotation_deg=(-20.0, 20.0), offset_mm=(-16.0, 16.0),
                   noise_hu=(2.0, 9.0), blur_px=(0.5, 1.2), partial_volume_mm=(0.3, 1.0),
                   skull_mm=(4.0, 8.5), sdh_thickness_mm=(3.0, 22.0), sdh_arc_deg=(25.0, 90.0),
                   sdh_small_mm=(1.5, 7.0), sdh_small_arc_deg=(10.0, 35.0), sdh_acute_hu=(48.0, 92.0),
                   sdh_subacute_hu=(28.0, 47.0), edh_thickness_mm=(8.0, 38.0), edh_small_mm=(3.0, 12.0),
                   edh_hu=(48.0, 92.0), iph_radius_mm=(3.0, 24.0), iph_hu=(48.0, 90.0))


@dataclass
class CtPhantom:
    """One phantom: HU (z, y, x), labels, spacing (dz, dy, dx), kind and drawn parameters."""

    hu: np.ndarray
    labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    kind: str
    case_id: str
    meta: dict[str, Any]

    def as_case(self) -> Case:
        return Case(self.case_id, self.case_id, self.hu, self.labels, self.spacing_mm, kind=self.kind)


def _fracture(rng: np.random.Generator, head: Any, hu: np.ndarray, bone: np.ndarray, plan: dict) -> None:
    """A fracture line through the skull over an EDH: a thin soft-tissue gap in the bone."""
    a, e = np.deg2rad(plan["az"]), np.deg2rad(plan["el"])
    n = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    tau = np.cross(n, rng.standard_normal(3))
    m = np.cross(n, tau / np.linalg.norm(tau))
    p = n * np.array([head.A, head.B, head.C]) * 0.9
    idx = np.nonzero(bone & (head.cos_to(plan["az"], plan["el"]) > np.cos(np.deg2rad(1.3 * max(plan["arc_deg"])))))
    X, Y, Z = head.X[0][idx[1], idx[2]], head.Y[0][idx[1], idx[2]], head.Z[:, 0, 0][idx[0]]
    dist = np.abs(m[0] * (X - p[0]) + m[1] * (Y - p[1]) + m[2] * (Z - p[2]))
    gap = dist < rng.uniform(0.4, 0.9)
    hu[tuple(i[gap] for i in idx)] = rng.uniform(40.0, 70.0)


def make_ct_phantom(seed: int | Sequence[int], kind: str | None = None, ranges: CtPhantomRanges | None = None,
                    case_id: str | None = None, kind_weights: dict[str, float] | str | None = None,
                    keep_fields: bool = False) -> CtPhantom:
    """Generate one phantom from ``seed`` (an int or a sequence of ints for ``SeedSequence``)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    R = ranges or CtPhantomRanges.training()
    if kind is None:
        weights = parse_kind_weights(kind_weights) if kind_weights is not None else KINDS
        kind = str(rng.choice(list(weights), p=np.array(list(weights.values())) / sum(weights.values())))
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}; got {kind!r}")
    ps, dz = uniform(rng, R.pixel_spacing_mm), uniform(rng, R.slice_spacing_mm)
    nz = int(rng.integers(R.n_slices[0], R.n_slices[1] + 1))
    ny, nx = R.size
    offset = (uniform(rng, R.offset_mm), uniform(rng, R.offset_mm))
    head, (rows, cols) = build_head(rng, (nz, ny, nx), ps, dz, uniform(rng, R.head_scale),
                                    uniform(rng, R.rotation_deg), offset, uniform(rng, R.skull_mm))
    zs = head.Z[:, 0, 0] / head.C
    el = np.rad2deg(np.arcsin(np.clip(zs, -0.95, 0.95)))
    el_range = (float(max(el[int(0.3 * (nz - 1))], -15.0)), float(min(el[int(0.8 * (nz - 1))], 45.0)))
    el_range = (min(el_range), max(el_range) + 1e-3)
    meta: dict[str, Any] = {"kind": kind, "pixel_spacing_mm": ps, "slice_spacing_mm": dz}
    plans = plan_lesions(rng, R, head, kind, el_range)
    swell_idx, swell_hu = swell_scalp(head, plans)
    b = head.below_table
    labels, les_hu, pushed = place_hematomas(rng, head, b, plans)
    for p in plans:
        if p["label"] == SDH and p["falx"]:
            place_parafalcine(rng, head, b, p, labels, les_hu)
    atrophy = rng.uniform(0.3, 1.0) if rng.random() < R.atrophy_fraction else 0.0
    bd = b - pushed
    del pushed
    hu, parts = paint_brain(rng, head, bd, atrophy)
    lesion = labels > 0
    hu[lesion] = les_hu[lesion]
    del les_hu
    add_confounders(rng, R, head, hu, b, bd, parts, kind, meta)
    bone = paint_skull_and_scalp(rng, head, hu, b, uniform(rng, R.partial_volume_mm))
    for p in plans:
        if p["label"] == EDH and p["fracture"]:
            _fracture(rng, head, hu, bone, p)
    hu.flat[swell_idx] = swell_hu
    labels[paint_skull_base(rng, head, hu, b)] = 0
    # Correlated noise: white noise blurred together with the image (the reconstruction kernel).
    sigma = uniform(rng, R.blur_px)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(uniform(rng, R.noise_hu) * 3.5 * sigma)
    ndimage.gaussian_filter(hu, (0.0, sigma, sigma), output=hu, truncate=2.0)
    bg = head_holder(rng, ny, nx, ps, offset, float(head.B) * 1.02)
    out = np.empty((nz, ny, nx), np.float32)
    out[:] = bg
    out[:, rows, cols] = np.where(head.depth > -1.0, hu, bg[rows, cols])
    full_labels = np.zeros((nz, ny, nx), np.uint8)
    full_labels[:, rows, cols] = labels
    meta.update(atrophy=atrophy, lesions=[{k: v for k, v in p.items()} for p in plans])
    if keep_fields:
        tissue = np.zeros(b.shape, np.uint8)  # 0 air, 1 scalp, 2 bone, 3 intracranial
        tissue[head.depth >= 0] = 1
        tissue[bone] = 2
        tissue[b >= 0] = 3
        meta["crop"] = (rows, cols)
        meta["tissue"], meta["below_table"] = tissue, b
        meta["suture_code"] = suture_code(head, head.X, head.Y, head.Z)
        meta["scalp_hematoma"] = swell_idx
        meta["head"] = head
    return CtPhantom(np.clip(out, -1024.0, 3071.0), full_labels, (float(dz), float(ps), float(ps)), kind,
                     case_id or f"ctphantom-{seed}", meta)


def generate_ct_phantom(index: int, seed: int, kind: str | None = None, ranges: CtPhantomRanges | None = None,
                        kind_weights: dict[str, float] | str | None = None) -> Case:
    """Phantom ``index`` of the set ``seed`` as a ``Case`` (deterministic per seed and index)."""
    return make_ct_phantom((seed, index), kind, ranges, f"ctphantom-s{seed}-{index:05d}", kind_weights).as_case()


def _one(job: tuple) -> Case:
    return generate_ct_phantom(*job)


def iter_ct_phantoms(indices: Iterable[int], seed: int, ranges: CtPhantomRanges | None = None,
                     kinds: Sequence[str] | None = None, kind_weights: dict[str, float] | str | None = None,
                     workers: int = 1) -> Iterator[Case]:
    """Yield phantoms ``indices`` of the set ``seed`` in order, one at a time."""
    jobs = [(i, seed, kinds[i % len(kinds)] if kinds else None, ranges, kind_weights) for i in indices]
    if workers <= 1:
        yield from (_one(j) for j in jobs)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_one, jobs, chunksize=1)


def save_montage(cases: Sequence[Case], path: str | Path, tile: int = 256, columns: int = 4) -> Path:
    """PNG of each case's most-labelled (else middle) slice at window 40/80, SDH contours red,
    EDH green."""
    from PIL import Image

    tiles = []
    for case in cases:
        area = (case.labels > 0).sum(axis=(1, 2))
        z = int(area.argmax()) if area.any() else case.hu.shape[0] // 2 + 2
        grey = (np.clip((case.hu[z] - 0.0) / 80.0, 0.0, 1.0) * 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        for label, colour in ((SDH, (255, 40, 40)), (EDH, (40, 255, 40))):
            m = case.labels[z] == label
            rgb[m & ~ndimage.binary_erosion(m, iterations=2)] = colour
        tiles.append(np.asarray(Image.fromarray(rgb).resize((tile, tile), Image.BILINEAR)))
    rows = -(-len(tiles) // columns)
    sheet = np.zeros((rows * tile, columns * tile, 3), np.uint8)
    for i, t in enumerate(tiles):
        sheet[(i // columns) * tile:(i // columns + 1) * tile, (i % columns) * tile:(i % columns + 1) * tile] = t
    out = Path(path)
    Image.fromarray(sheet).save(out, optimize=True)
    return out
