"""Synthetic head-CT phantoms with subdural and epidural hematomas, in Hounsfield units.

A phantom is a deformed ellipsoidal head (scalp, skull that thickens towards the base, bony
ridges low in the head, air sinuses, CSF rim, cortex with sulci, white matter, ventricles,
falx, calcifications) sampled on a random CT grid. Lesions:

* SDH (label 1): a crescent along the inner table over a long arc (55-85 degrees from its
  centre to each tip), thin for its length, tapering at the tips, stopped by the falx; acute
  (hyperdense) or subacute (near-isodense). Shorter arcs are not used: a dome-shaped
  collection 18 mm thick over 35 degrees is a scaled copy of a small EDH, which no reader
  could tell apart by shape.
* EDH (label 2): a biconvex lens, short and thick; its arc is tied to its thickness so the
  inner margin is convex.
* Confounders, never labelled: intraparenchymal bleed (IPH) with an oedema rim,
  calcifications (pineal, choroid, dural), skull-base bone.

Lesions are built in "depth" coordinates: the radial distance inward from the skin. A lesion
of thickness ``t(direction)`` occupies the depths just inside the inner table and pushes the
brain layers inward by ``t`` (mass effect). All sampling ranges live in ``PhantomRanges`` so a
held-out set can use another seed and wider ranges (``PhantomRanges.evaluation()``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from scipy import ndimage

from .cases import Case
from .findings import EDH, SDH

logger = logging.getLogger(__name__)

#: Generator versions that can still be produced. 2: SDH arcs of 55-85 degrees (v1 had shorter
#: ones, which looked like EDH); 3: intraparenchymal bleeds kept off the inner table.
PHANTOM_VERSIONS = (2, 3)
PHANTOM_VERSION = 3

#: Case kinds and their default sampling weights.
KINDS: dict[str, float] = {"sdh": 0.3, "edh": 0.25, "both": 0.1, "negative": 0.15, "iph": 0.2}
Range = tuple[float, float]


@dataclass(frozen=True)
class PhantomRanges:
    """Uniform sampling ranges for every random phantom parameter (mm, HU, degrees)."""

    pixel_spacing_mm: Range = (0.42, 0.5)
    slice_thickness_mm: Range = (3.0, 5.0)
    n_slices: tuple[int, int] = (24, 40)
    size: tuple[int, int] = (512, 512)
    head_scale: Range = (0.9, 1.08)
    rotation_deg: Range = (-15.0, 15.0)
    offset_mm: Range = (-12.0, 12.0)
    noise_hu: Range = (3.0, 8.0)
    blur_px: Range = (0.5, 1.0)
    skull_mm: Range = (5.0, 8.0)
    sdh_thickness_mm: Range = (4.0, 16.0)
    sdh_arc_deg: Range = (55.0, 85.0)
    sdh_acute_hu: Range = (58.0, 80.0)
    sdh_subacute_hu: Range = (44.0, 52.0)
    subacute_fraction: float = 0.15
    edh_thickness_mm: Range = (8.0, 30.0)
    edh_hu: Range = (58.0, 85.0)
    iph_radius_mm: Range = (6.0, 20.0)
    iph_hu: Range = (58.0, 85.0)
    #: The bleed of an IPH stays at least this deep below the inner table (its oedema rim 2 mm
    #: less), so CSF and cortex always separate it from the skull. 0: no limit (phantoms v2,
    #: where a superficial IPH could fill the space up to the bone and look exactly like an EDH).
    iph_min_depth_mm: float = 5.0

    @classmethod
    def training(cls, version: int = PHANTOM_VERSION) -> "PhantomRanges":
        return cls()._as_version(version)

    @classmethod
    def evaluation(cls, version: int = PHANTOM_VERSION) -> "PhantomRanges":
        """Wider than training on every geometric, acquisition and lesion parameter."""
        return cls(pixel_spacing_mm=(0.38, 0.56), slice_thickness_mm=(2.5, 5.0),
                   n_slices=(20, 44), head_scale=(0.86, 1.12), rotation_deg=(-22.0, 22.0),
                   offset_mm=(-18.0, 18.0), noise_hu=(2.0, 10.0), blur_px=(0.4, 1.2),
                   skull_mm=(4.5, 9.0), sdh_thickness_mm=(3.5, 18.0), sdh_arc_deg=(50.0, 95.0),
                   sdh_acute_hu=(55.0, 85.0), sdh_subacute_hu=(42.0, 54.0),
                   subacute_fraction=0.2, edh_thickness_mm=(7.0, 34.0), edh_hu=(55.0, 90.0),
                   iph_radius_mm=(5.0, 24.0), iph_hu=(55.0, 90.0))._as_version(version)

    def _as_version(self, version: int) -> "PhantomRanges":
        """These ranges as phantoms ``version`` made them, so that older training commands (the
        shipped weights' first stages) still generate exactly their data."""
        if version not in PHANTOM_VERSIONS:
            raise ValueError(f"phantom version must be one of {list(PHANTOM_VERSIONS)}; got {version!r}")
        return self if version >= 3 else replace(self, iph_min_depth_mm=0.0)


@dataclass
class Phantom:
    """One synthetic case: HU volume (z, y, x), labels, spacing (dz, dy, dx) and truth."""

    hu: np.ndarray
    labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    kind: str
    case_id: str
    meta: dict[str, Any]

    @property
    def patient_id(self) -> str:
        return self.case_id

    @property
    def slice_mask(self) -> None:
        return None

    def as_case(self) -> Case:
        """The phantom as a ``segmenter.cases.Case`` (one patient per phantom)."""
        return Case(self.case_id, self.patient_id, self.hu, self.labels, self.spacing_mm)


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-ish, low-frequency random field (cheap: upsampled coarse noise)."""
    small = rng.standard_normal(coarse).astype(np.float32)
    zoom = [s / c for s, c in zip(shape, coarse)]
    return ndimage.zoom(small, zoom, order=1, mode="nearest", grid_mode=True)[tuple(slice(0, s) for s in shape)]


def _direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    a, e = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    return np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], dtype=np.float32)


def _lesion_thickness(cos_angle: np.ndarray, arc_deg: float, peak_mm: float, power: float) -> np.ndarray:
    """Thickness profile over angular distance: peak at 0, zero at ``arc_deg``."""
    ang = np.arccos(np.clip(cos_angle, -1.0, 1.0))
    s = np.clip(1.0 - (ang / np.deg2rad(arc_deg)) ** 2, 0.0, None)
    return (peak_mm * s**power).astype(np.float32)


def make_phantom(seed: int, kind: str | None = None, ranges: PhantomRanges | None = None,
                 case_id: str | None = None, kind_weights: dict[str, float] | None = None) -> Phantom:
    """Generate one phantom.

    Parameters
    ----------
    seed:
        Seed of the generator; the same seed, kind and ranges give the same phantom.
    kind:
        One of ``KINDS`` or None to draw by the default weights.
    ranges:
        Sampling ranges (default ``PhantomRanges.training()``).
    kind_weights:
        Weights for drawing the kind when ``kind`` is None (default ``KINDS``).

    Returns
    -------
    Phantom
        ``hu`` float32 and ``labels`` uint8 of shape (slices, rows, cols).
    """
    rng = np.random.default_rng(seed)
    R = ranges or PhantomRanges.training()
    if kind is None:
        weights = parse_kind_weights(kind_weights) if kind_weights is not None else KINDS
        kind = str(rng.choice(list(weights), p=np.array(list(weights.values())) / sum(weights.values())))
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}; got {kind!r}")
    ps, dz = _u(rng, R.pixel_spacing_mm), _u(rng, R.slice_thickness_mm)
    nz = int(rng.integers(R.n_slices[0], R.n_slices[1] + 1))
    ny, nx = R.size
    scale = _u(rng, R.head_scale)
    A, B, C = 70.0 * scale * rng.uniform(0.94, 1.06), 88.0 * scale, 78.0 * scale  # semi-axes LR, AP, SI
    # The stack starts at the skull base and climbs; thin slices cover less of the head.
    z0 = rng.uniform(-0.62, -0.38) * C
    z = (z0 + dz * np.arange(nz, dtype=np.float32))[:, None, None]
    theta = np.deg2rad(_u(rng, R.rotation_deg))
    cy, cx = _u(rng, R.offset_mm), _u(rng, R.offset_mm)
    yy = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * ps - cy)[None, :, None]
    xx = ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * ps - cx)[None, None, :]
    # Head frame: X patient left (+col), Y posterior (+row), Z superior.
    X = (np.cos(theta) * xx + np.sin(theta) * yy).astype(np.float32)
    Y = (-np.sin(theta) * xx + np.cos(theta) * yy).astype(np.float32)
    Z = np.broadcast_to(z, (nz, 1, 1)).astype(np.float32)
    u, v, w = X / A, Y / B, Z / C
    q = np.sqrt(u * u + v * v + w * w) + 1e-6
    rho = np.sqrt(X * X + Y * Y + Z * Z)
    # Irregular skin surface: low-order bumps on the radius, a function of direction only.
    equator = np.sqrt(u * u + v * v) / q  # fade the bumps out at the vertex
    bumps = 1.0 + equator * (0.025 * np.sin(3 * np.arctan2(v, u) + rng.uniform(0, 6.3)) + 0.015 * np.cos(5 * w / q))
    depth = (rho * (bumps / q - 1.0)).astype(np.float32)  # mm inward from the skin
    del rho
    base = np.broadcast_to(np.clip((-w - 0.2) / 0.3, 0.0, 1.0), depth.shape)  # 0 above the skull base
    scalp = rng.uniform(4.0, 7.0)
    skull = _u(rng, R.skull_mm) * (1.0 + 1.6 * base) + 0.8 * _smooth_field(rng, depth.shape, (4, 6, 6))
    inner = scalp + skull  # depth of the inner table

    def cos_to(d: np.ndarray) -> np.ndarray:
        """Unnormalised cosine between each voxel's ellipsoid direction and ``d``."""
        return (u * d[0] * A / max(A, B) + v * d[1] * B / max(A, B) + w * d[2]) / (q * 1.0)

    # Lesions: thickness per direction, stacked just inside the inner table.
    side = float(rng.choice([-1.0, 1.0]))
    labels = np.zeros(depth.shape, np.uint8)
    hu_lesion = np.zeros(depth.shape, np.float32)
    pushed = np.zeros(depth.shape, np.float32)
    meta: dict[str, Any] = {"kind": kind, "pixel_spacing_mm": ps, "slice_thickness_mm": dz}
    elev_lo, elev_hi = np.rad2deg(np.arcsin(np.clip((z0 + 0.3 * nz * dz) / C, -0.5, 0.9))), 40.0

    def add_lesion(label: int, lesion_side: float) -> None:
        nonlocal pushed
        az = (0.0 if lesion_side > 0 else 180.0) + rng.uniform(-60, 60)
        el = rng.uniform(min(elev_lo, elev_hi - 5), elev_hi)
        d = _direction(az, el)
        cosang = cos_to(d) / np.linalg.norm([d[0] * A / max(A, B), d[1] * B / max(A, B), d[2]])
        if label == SDH:
            peak, arc = _u(rng, R.sdh_thickness_mm), _u(rng, R.sdh_arc_deg)
            t = _lesion_thickness(cosang, arc, peak, 0.6)
            t *= np.clip(lesion_side * X / 8.0, 0.0, 1.0)  # the falx stops an SDH at the midline
            subacute = rng.random() < R.subacute_fraction
            value = _u(rng, R.sdh_subacute_hu if subacute else R.sdh_acute_hu)
            meta.setdefault("sdh", []).append({"thickness_mm": peak, "arc_deg": arc, "subacute": subacute})
        else:
            peak = _u(rng, R.edh_thickness_mm)
            # Arc where the chord sag is below half the thickness: the inner margin stays convex.
            arc = np.rad2deg(np.arccos(1 - peak / (2 * 70.0 * scale))) * rng.uniform(0.75, 1.0)
            t = _lesion_thickness(cosang, arc, peak, 0.5)
            value = _u(rng, R.edh_hu)
            meta.setdefault("edh", []).append({"thickness_mm": peak, "arc_deg": float(arc)})
        inside = (depth >= inner + pushed) & (depth < inner + pushed + t) & (t > 0.3)
        labels[inside] = label
        hu_lesion[inside] = value
        pushed = pushed + t
        meta.setdefault("sides", []).append("left" if lesion_side > 0 else "right")

    if kind in ("sdh", "both"):
        add_lesion(SDH, side)
    if kind in ("edh", "both"):
        add_lesion(EDH, -side if kind == "both" else side)
    labels[base > 0.6] = 0  # no lesion inside the skull base bone block
    hu = _anatomy(rng, depth - pushed, depth, scalp, inner, base, X, Y, Z, A, B, C, nz)
    hu = np.where(labels > 0, hu_lesion, hu)
    if kind == "iph":
        _add_iph(rng, R, hu, X, Y, Z, A, B, C, depth - inner, meta)
    _add_calcifications(rng, hu, X, Y, Z, depth - pushed, inner, meta)
    sigma = _u(rng, R.blur_px)
    hu = ndimage.gaussian_filter(hu, sigma=(0.0, sigma, sigma), truncate=2.5)
    noise = rng.standard_normal(hu.shape, dtype=np.float32) * _u(rng, R.noise_hu)
    hu += ndimage.uniform_filter(noise, size=(1, 2, 2)) * 1.6  # correlated noise, like CT
    hu = np.clip(hu, -1024.0, 3071.0).astype(np.float32)
    return Phantom(hu, labels, (float(dz), float(ps), float(ps)), kind,
                   case_id or f"phantom-{seed:06d}", meta)


def _anatomy(rng: np.random.Generator, bdepth: np.ndarray, depth: np.ndarray, scalp: float, inner: np.ndarray,
             base: np.ndarray, X: np.ndarray, Y: np.ndarray, Z: np.ndarray,
             A: float, B: float, C: float, nz: int) -> np.ndarray:
    """HU of the normal head; ``bdepth`` is the depth shifted by lesion mass effect."""
    shape = depth.shape
    tex = _smooth_field(rng, shape, (max(2, nz // 3), 40, 40))
    csf = rng.uniform(1.0, 3.0)
    cortex = 3.0 + 0.8 * tex
    gm, wm = rng.uniform(34.0, 40.0), rng.uniform(24.0, 30.0)
    hu = np.full(shape, wm, np.float32) + 1.5 * tex
    b = bdepth - inner  # depth below the inner table, after mass effect
    hu[b < csf + cortex] = gm
    sulci = (b < csf + cortex + 6.0) & (tex > 0.9) & (b > 0)
    hu[sulci] = rng.uniform(4.0, 12.0)
    hu[(b < csf) & (b > -100)] = rng.uniform(2.0, 10.0)
    # Ventricles: two paired ellipsoids off the midline; falx a thin hyperdense midline sheet.
    for s in (-1.0, 1.0):
        v = ((X - s * 0.12 * A) / (0.1 * A)) ** 2 + ((Y + 0.05 * B) / (0.35 * B)) ** 2 + ((Z - 0.1 * C) / (0.22 * C)) ** 2
        hu[v < 1.0] = 6.0
    falx = (np.abs(X) < 0.6) & (b > 0) & (Z > -0.1 * C) & (np.abs(Y) < 0.9 * B)
    hu[falx] = rng.uniform(45.0, 70.0)
    # Skull base: brain gives way to bone ridges (petrous, sphenoid) and air sinuses.
    petrous = np.abs(np.abs(X) * 0.75 - (Y - 0.05 * B) * 0.66) < 1.5 + 3.0 * base
    sphenoid = np.abs(np.abs(X) * 0.3 + (Y + 0.3 * B) * 0.95) < 1.5 + 2.0 * base
    ridge = (base > 0.25) & (petrous | sphenoid) & (np.abs(X) > 5.0) & (b > 0)
    hu[ridge] = rng.uniform(500, 1200)
    sinus = (base > 0.2) & (((Y + 0.75 * B) / (0.18 * B)) ** 2 + (X / (0.2 * A)) ** 2 < 1.0)
    hu[sinus] = -900.0
    hu[(depth >= 0) & (depth < scalp)] = rng.uniform(20.0, 50.0)
    bone = (depth >= scalp) & (depth < inner)
    diploe = np.abs(depth - (inner + scalp) / 2) < 0.18 * (inner - scalp)
    hu[bone] = rng.uniform(1200.0, 1800.0)
    hu[bone & diploe] = rng.uniform(500.0, 800.0)
    hu[depth < 0] = -1000.0
    return hu


def _add_iph(rng: np.random.Generator, R: PhantomRanges, hu: np.ndarray, X: np.ndarray,
             Y: np.ndarray, Z: np.ndarray, A: float, B: float, C: float, below_table: np.ndarray,
             meta: dict[str, Any]) -> None:
    """Intraparenchymal bleed with an oedema rim, deep to the cortex; unlabelled confounder.

    ``below_table``: each voxel's depth below the inner table (mm).
    """
    r = _u(rng, R.iph_radius_mm)
    c = np.array([rng.uniform(-0.45, 0.45) * A, rng.uniform(-0.45, 0.45) * B, rng.uniform(0.0, 0.35) * C])
    d2 = ((X - c[0]) ** 2 + ((Y - c[1]) / 1.2) ** 2 + ((Z - c[2]) / 1.1) ** 2)
    rim = (d2 < (r + 4.0) ** 2) & (d2 >= r**2) & (hu > 15) & (hu < 45)
    core = (d2 < r**2) & (hu > 0) & (hu < 100)
    if R.iph_min_depth_mm > 0:  # skipped at 0, so version-2 phantoms stay bit for bit the same
        rim &= below_table >= R.iph_min_depth_mm - 2.0
        core &= below_table >= R.iph_min_depth_mm
    hu[rim] = rng.uniform(12.0, 20.0)
    hu[core] = _u(rng, R.iph_hu)
    shallowest = float(below_table[core].min()) if core.any() else None
    meta["iph"] = {"radius_mm": r, "center_mm": c.tolist(), "min_depth_below_table_mm": shallowest}


def _add_calcifications(rng: np.random.Generator, hu: np.ndarray, X: np.ndarray, Y: np.ndarray,
                        Z: np.ndarray, bdepth: np.ndarray, inner: np.ndarray, meta: dict[str, Any]) -> None:
    """Pineal, choroid-plexus and dural calcifications: dense dots that are not bleeds."""
    n = int(rng.integers(0, 4))
    for i in range(n):
        c = rng.uniform([-25, -10, 0], [25, 40, 40])
        r = rng.uniform(1.0, 3.5)
        m = (X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2 < r * r
        hu[m & (hu < 100) & (hu > -100)] = rng.uniform(120.0, 450.0)
    if rng.random() < 0.3:  # a dural plaque touching the inner table
        m = (bdepth - inner > 0) & (bdepth - inner < 1.5) & (np.abs(X - rng.uniform(-40, 40)) < 4) & (np.abs(Z - 30) < 4)
        hu[m] = rng.uniform(150.0, 400.0)
    meta["calcifications"] = n


def parse_kind_weights(weights: dict[str, float] | str) -> dict[str, float]:
    """Kind weights from a dict or ``"sdh=1,edh=1,both=2,negative=0.5,iph=1"``; checked."""
    if isinstance(weights, str):
        try:
            weights = {k.strip(): float(v) for k, v in (item.split("=") for item in weights.split(","))}
        except ValueError:
            raise ValueError(f"kind weights must look like 'sdh=1,edh=1,both=1'; got {weights!r}") from None
    unknown = set(weights) - set(KINDS)
    if unknown or not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"kind weights must be non-negative, not all zero, for kinds {sorted(KINDS)}; got {weights}")
    return dict(weights)


def phantom_seed(seed: int, index: int) -> int:
    """Seed of phantom ``index`` of a set generated with ``seed`` (sets never overlap)."""
    return seed * 1_000_003 + index


def _one(args: tuple[int, int, PhantomRanges | None, str | None, dict[str, float] | None]) -> Phantom:
    seed, index, ranges, kind, weights = args
    return make_phantom(phantom_seed(seed, index), kind, ranges, case_id=f"synth-s{seed}-{index:05d}",
                        kind_weights=weights)


def iter_phantoms(indices: Iterable[int], seed: int, ranges: PhantomRanges | None = None,
                  kinds: Sequence[str] | None = None, workers: int = 1,
                  kind_weights: dict[str, float] | None = None) -> Iterator[Phantom]:
    """Yield phantoms ``indices`` of the set ``seed`` in order, one at a time (bounded memory).

    ``kinds`` (cycled by index) fixes the kind of each phantom; otherwise it is drawn with
    ``kind_weights`` (default ``KINDS``).
    """
    jobs = [(seed, i, ranges, kinds[i % len(kinds)] if kinds else None, kind_weights) for i in indices]
    if workers <= 1:
        yield from (_one(j) for j in jobs)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_one, jobs, chunksize=1)


def write_phantom_series(phantom: Phantom, out_dir: str | Path, **header: Any) -> dict[str, Any]:
    """Write ``out_dir/dicom/*.dcm``, ``labels.npy``, ``labels.nii.gz`` and ``truth.json``.

    The layout is the one ``realdata.load_dicom_nifti`` reads. The series is axial with
    orientation (1,0,0,0,1,0) and slice ``k`` at z = ``k * dz``, so ``labels.npy`` is in
    the sorted-series order (z, rows, cols). ``header`` goes to ``dicom_io.write_ct_series``.
    """
    import json

    import nibabel as nib

    from .dicom_io import write_ct_series

    out = Path(out_dir)
    dz, dy, dx = phantom.spacing_mm
    nz, ny, nx = phantom.hu.shape
    origin = (-(nx - 1) / 2 * dx, -(ny - 1) / 2 * dy, 0.0)
    header.setdefault("patient_id", phantom.case_id.upper()[:16])
    header.setdefault("series_description", f"PHANTOM HEAD {dz:.1f}mm")
    header.setdefault("slice_thickness_mm", dz)
    paths = write_ct_series(phantom.hu, phantom.spacing_mm, out / "dicom", origin=origin, **header)
    np.save(out / "labels.npy", phantom.labels)
    lps = np.diag([dx, dy, dz, 1.0])
    lps[:3, 3] = origin
    nib.save(nib.Nifti1Image(phantom.labels.transpose(2, 1, 0), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps),
             out / "labels.nii.gz")
    truth = {"case_id": phantom.case_id, "kind": phantom.kind, "spacing_mm": phantom.spacing_mm,
             "shape": list(phantom.hu.shape), **{k: v for k, v in phantom.meta.items() if k != "kind"}}
    (out / "truth.json").write_text(json.dumps(truth, indent=2, default=float) + "\n", encoding="utf-8")
    return {"dicom": paths, "labels": out / "labels.npy", "truth": truth}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m segmenter make-phantoms --count N --seed S --out DIR [--wide] [--kinds ...]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m segmenter make-phantoms",
                                description="Write synthetic head-CT DICOM series with label volumes.")
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--wide", action="store_true", help="use the wider evaluation ranges")
    p.add_argument("--kinds", help=f"comma-separated kinds to cycle through, from {','.join(KINDS)}")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ranges = PhantomRanges.evaluation() if a.wide else PhantomRanges.training()
    kinds = a.kinds.split(",") if a.kinds else None
    for i in range(a.count):
        ph = _one((a.seed, i, ranges, kinds[i % len(kinds)] if kinds else None, None))
        info = write_phantom_series(ph, Path(a.out) / ph.case_id)
        logger.info("%s: %s, %d slices", ph.case_id, ph.kind, len(info["dicom"]))
    return 0
