"""Normal tissue for the CT-like phantoms: brain, skull, scalp, skull base and scanner effects.

Values follow real non-contrast head CT: grey matter 35-45 HU, white matter 22-30 HU, CSF
0-10 HU, cortical bone 1000-1800 HU with 300-700 HU diploe. The brain touches the inner table
(a CSF rim only in atrophic heads), and the slice's partial volume with the inner table makes
a bright blurred band there, which is normal anatomy and never labelled.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .phantom_ct_head import CSF_HU, FAT_HU, Head, harmonics, suture_gaps


@dataclass
class Parts:
    """Flat indices (into the crop) of structures that confounders may fill with blood."""

    sulci: np.ndarray
    ventricles: np.ndarray
    falx: np.ndarray
    gm_hu: float


def _segment_distance(X: np.ndarray, Y: np.ndarray, p: tuple[float, float], q: tuple[float, float]) -> np.ndarray:
    """Distance (mm) from each point to the segment p-q."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    t = np.clip(((X - p[0]) * dx + (Y - p[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(X - p[0] - t * dx, Y - p[1] - t * dy)


def paint_brain(rng: np.random.Generator, head: Head, bd: np.ndarray, atrophy: float) -> tuple[np.ndarray, Parts]:
    """HU of the intracranial content; ``bd`` is the depth below the brain surface (after mass
    effect), ``atrophy`` 0 (none) to 1 (CSF rim, wide sulci, big ventricles)."""
    X, Y, Z, A, B, C = head.X, head.Y, head.Z, head.A, head.B, head.C
    nz = Z.shape[0]
    gm, wm = rng.uniform(35.0, 44.0), rng.uniform(22.0, 30.0)
    # Low-frequency mottle: two smooth 2-D patterns mixed differently on each slice.
    t1 = np.sin(X / rng.uniform(9, 15) + rng.uniform(0, 6)) * np.cos(Y / rng.uniform(9, 15) + rng.uniform(0, 6))
    t2 = np.sin((X + Y) / rng.uniform(6, 10) + rng.uniform(0, 6))
    mix = rng.uniform(-1.5, 1.5, (2, nz, 1, 1)).astype(np.float32)
    hu = (wm + mix[0] * t1 + mix[1] * t2).astype(np.float32)
    hu = np.broadcast_to(hu, bd.shape).copy()
    # Cortex and sulci on the outer shell: sulci are zero-crossings of a random field over
    # directions, so they run inward from the surface; grey matter lines them.
    ribbon = rng.uniform(2.5, 4.0)
    sulcal_depth = rng.uniform(8.0, 14.0)
    width = rng.uniform(0.35, 0.6) + 1.0 * atrophy
    shell = np.nonzero((bd > -1.0) & (bd < sulcal_depth + ribbon))
    nw = head.nw[shell]
    ph = head.phi[0][shell[1], shell[2]]
    nh = np.sqrt(np.clip(1.0 - nw * nw, 0.0, 1.0))
    P = (60.0 * nh * np.cos(ph), 60.0 * nh * np.sin(ph), 60.0 * nw)
    f = np.zeros(nw.shape, np.float32)
    for _ in range(5):
        k = rng.standard_normal(3)
        k *= 2 * np.pi / rng.uniform(22.0, 34.0) / np.linalg.norm(k)
        f += np.sin(k[0] * P[0] + k[1] * P[1] + k[2] * P[2] + rng.uniform(0, 6.3)).astype(np.float32)
    dist = np.abs(f) / (2 * np.pi / 28.0 * np.sqrt(2.5))  # ~ mm from the nearest sulcus
    b = bd[shell]
    vals = hu[shell]
    vals[b < ribbon] = gm
    vals[(dist < width + ribbon) & (b < sulcal_depth + ribbon)] = gm
    sulcus = (dist < width * (1.1 - 0.6 * b / sulcal_depth)) & (b >= 0)
    vals[sulcus] = rng.uniform(*CSF_HU)
    rim = rng.uniform(0.8, 3.5) * atrophy * (1.0 + harmonics(rng, ph, (2, 3), 0.4))
    vals[(b >= 0) & (b < rim)] = rng.uniform(*CSF_HU)
    hu[shell] = vals
    flat = np.ravel_multi_index(shell, hu.shape)
    sulci = flat[sulcus]
    # Deep structures, slice by slice where they exist.
    vent_scale = 1.0 + 0.8 * atrophy
    vent_hu = rng.uniform(*CSF_HU)
    vent_idx = []
    for k in range(nz):
        z = float(Z[k, 0, 0]) / C
        x, y = X[0], Y[0]
        sl = hu[k]
        if -0.3 < z < 0.1:  # basal ganglia and thalami
            for s in (-1, 1):
                sl[((x - s * 0.26 * A) / (0.13 * A)) ** 2 + ((y - 0.0 * B) / (0.2 * B)) ** 2 < 1.0] = gm - 3.0
        if -0.2 < z < 0.38:  # lateral ventricles: bodies near the midline, atria diverging
            h = np.sqrt(max(0.0, 1.0 - ((z - 0.09) / 0.29) ** 2))
            ax = (0.045 * A * vent_scale) * (0.5 + h)
            vent = np.zeros(x.shape, bool)
            for s in (-1, 1):
                xc = s * (ax + 1.5 + 0.18 * np.clip(y - 0.05 * B, 0, None))
                vent |= ((x - xc) / ax) ** 2 + ((y - 0.02 * B) / (0.38 * B * h + 1e-3)) ** 2 < 1.0
            if z < -0.02:
                vent |= (np.abs(x) < 1.2 * vent_scale) & (np.abs(y - 0.05 * B) < 0.13 * B)  # third ventricle
            sl[vent] = vent_hu
            vent_idx.append(np.flatnonzero(vent) + k * x.size)
        if z < -0.3:  # perimesencephalic cistern around the midbrain, fourth ventricle
            r = np.hypot(x, y - 0.12 * B)
            ring = (r > rng.uniform(11, 13)) & (r < 15.0 + 2 * atrophy)
            sl[ring & (bd[k] > 0)] = vent_hu
            sl[(x / 4.0) ** 2 + ((y - 0.42 * B) / 5.0) ** 2 < 1.0] = vent_hu
    # Interhemispheric fissure and falx above the tentorium; the falx is a bright line.
    tent = head.tentorium_height(X, Y)
    upper = (Z > tent) & (bd > 0)
    fiss = (np.abs(X) < 0.6 + 1.5 * atrophy) & ((np.abs(Y) > 0.3 * B) | (Z > 0.3 * C))
    hu[upper & fiss] = vent_hu
    falx_m = upper & (np.abs(X) < rng.uniform(0.35, 0.6)) & ((np.abs(Y) > 0.2 * B) | (Z > 0.15 * C))
    falx = np.flatnonzero(falx_m)
    hu.flat[falx] = rng.uniform(45.0, 75.0)
    # Tentorium: a bright band where the slice cuts the tent; cerebellum below it.
    band = (np.abs(Z - tent) < 1.5) & (Y > 0.0) & (bd > 0)
    hu[band] = rng.uniform(45.0, 65.0)
    cereb = (Z < tent - 1.5) & (Y > 0.05 * B) & (bd > 0)
    folia = np.sin(Y[0] / 1.5 + 0.2 * X[0])  # cerebellar folia: fine parallel stripes
    ci = np.nonzero(cereb)
    hu[ci] = (gm + wm) / 2 + 2.0 * folia[ci[1], ci[2]]
    ventricles = np.concatenate(vent_idx) if vent_idx else np.zeros(0, np.int64)
    return hu, Parts(sulci, ventricles, falx, gm)


def paint_skull_and_scalp(rng: np.random.Generator, head: Head, hu: np.ndarray, b: np.ndarray,
                          pv_mm: float) -> np.ndarray:
    """Partial-volume band, skull tables, diploe, sutures and scalp; returns the bone mask."""
    # Brain -> bone gradient: a blurred bright band just inside the inner table, wider where
    # the slice cuts the skull obliquely (high slices).
    near = np.nonzero((b >= 0) & (b < 10.0 * pv_mm))
    oblique = 1.0 / np.clip(head.nh[near], 0.35, 1.0)
    w = np.exp(-b[near] / (pv_mm * oblique))
    hu[near] += (rng.uniform(180.0, 320.0) - hu[near]) * w
    d, scalp, skull = head.depth, head.scalp, head.skull
    bone = (b < 0) & (d >= scalp)
    idx = np.nonzero(bone)
    s, t = (d[idx] - scalp[idx]), skull[idx]
    outer_t = np.clip(0.32 * t, 1.0, 2.8)
    inner_t = np.clip(0.25 * t, 0.8, 2.2)
    noise = rng.standard_normal(s.shape).astype(np.float32)
    table_hu = rng.uniform(1300.0, 1800.0)
    vals = table_hu + 120.0 * noise
    diploe = (s > outer_t) & (s < t - inner_t)
    vals[diploe] = rng.uniform(300.0, 650.0) + 150.0 * noise[diploe]
    gap = suture_gaps(head, idx, rng.uniform(0.35, 0.7))
    vals[gap] = rng.uniform(80.0, 300.0)
    hu[idx] = vals
    # Scalp: skin, subcutaneous fat, galea and temporalis muscle.
    sc = np.nonzero((d >= 0) & (d < scalp))
    ds = d[sc]
    patchy = 1.0 + harmonics(rng, head.phi[0][sc[1], sc[2]], (3, 5, 7), 0.8)  # fat thins out in places
    fat_end = 1.0 + rng.uniform(0.15, 0.4) * np.minimum(scalp[sc], 6.0) * np.clip(patchy, 0.0, None)
    vals = np.full(ds.shape, rng.uniform(35.0, 50.0), np.float32)
    vals[(ds > 1.0) & (ds < fat_end)] = rng.uniform(*FAT_HU)
    hu[sc] = vals
    hu[d < 0] = -1000.0
    return bone


def paint_skull_base(rng: np.random.Generator, head: Head, hu: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bony ridges, sinus and mastoid air and beam-hardening streaks on low slices; returns
    the voxels turned to bone or air there (no lesion may stay labelled in them)."""
    X, Y, A, B = head.X[0], head.Y[0], head.A, head.B
    hard = np.zeros(hu.shape, bool)
    ridge_hu = rng.uniform(1000.0, 1600.0)
    pet = [((s * 0.7 * A, 0.32 * B), (s * 0.18 * A, 0.02 * B)) for s in (-1, 1)]
    wing = [((s * 0.12 * A, -0.25 * B), (s * 0.75 * A, -0.45 * B)) for s in (-1, 1)]
    d_pet = np.minimum(*[_segment_distance(X, Y, p, q) for p, q in pet])
    d_wing = np.minimum(*[_segment_distance(X, Y, p, q) for p, q in wing])
    bar = _segment_distance(X, Y, pet[0][1], pet[1][1])
    streak_lines = []
    for _ in range(int(rng.integers(3, 7))):
        ang = rng.uniform(0, np.pi)
        ox, oy = pet[int(rng.integers(0, 2))][0]
        dist = np.abs((X - ox) * np.sin(ang) - (Y - oy) * np.cos(ang))
        streak_lines.append(rng.uniform(-35, 20) * np.exp(-(dist / rng.uniform(0.5, 1.5)) ** 2))
    streaks = np.sum(streak_lines, axis=0).astype(np.float32)
    mastoid = (np.sin(X * 1.3) * np.sin(Y * 1.3) > 0.4)
    for k in np.flatnonzero(head.base[:, 0, 0] > 0.05):
        beta = float(head.base[k, 0, 0])
        inside, sl = b[k] > 0, hu[k]
        pet_k = (d_pet < 1.0 + 2.5 * beta) & inside
        wing_k = (d_wing < 1.0 + 2.0 * beta) & inside & (beta > 0.3)
        sphen = ((X / (5 + 12 * beta)) ** 2 + ((Y + 0.3 * B) / (0.16 * B)) ** 2 < 1.0) & inside & (beta > 0.45)
        sl[sphen] = rng.uniform(400, 900)
        sinus = ((X / (0.14 * A)) ** 2 + ((Y + 0.3 * B) / (0.12 * B)) ** 2 < 1.0) & sphen
        sl[sinus] = -950.0
        sl[pet_k | wing_k] = ridge_hu
        air = pet_k & mastoid & (d_pet > 1.0 + 2.0 * beta) & (np.abs(X) > 0.45 * A)
        sl[air] = -900.0
        hard[k] = pet_k | wing_k | sphen
        brain = inside & ~hard[k]
        dark = -rng.uniform(15, 35) * beta * np.exp(-(bar / rng.uniform(3, 6)) ** 2) * (Y > 0)
        sl[brain] += (dark + beta * streaks)[brain]
    return hard


def head_holder(rng: np.random.Generator, ny: int, nx: int, ps: float, head_center: tuple[float, float],
                back_mm: float) -> np.ndarray:
    """Background slice: air, a curved head holder (with a foam pad) behind the head."""
    yy = (np.arange(ny, dtype=np.float32)[:, None] - (ny - 1) / 2) * ps
    xx = (np.arange(nx, dtype=np.float32)[None, :] - (nx - 1) / 2) * ps
    bg = np.full((ny, nx), -1000.0, np.float32)
    radius = rng.uniform(80.0, 95.0)
    cy = head_center[0] + back_mm + rng.uniform(4.0, 14.0) - radius
    r = np.hypot(xx - head_center[1], yy - cy)
    lower = yy > cy
    shell = lower & (np.abs(r - radius) < rng.uniform(1.0, 2.0))
    pad = lower & (r < radius - 1.5) & (r > radius - rng.uniform(4, 10))
    bg[pad] = rng.uniform(-950.0, -800.0)
    bg[shell] = rng.uniform(150.0, 400.0)
    shell2 = lower & (np.abs(r - radius - rng.uniform(5, 10)) < 0.8)
    bg[shell2] = rng.uniform(100.0, 300.0)
    return bg
