"""Hematomas and unlabelled confounders for the CT-like phantoms of ``segmenter.phantom_ct``.

SDH and EDH overlap in size, arc and density, as real ones do; only their shape tells them
apart. An SDH's thickness is flat over most of its arc and tapers at the tips, so its inner
margin runs parallel to the inner table (a crescent, concave toward the brain) whether it is
short or long; it ignores sutures and stops at the falx. An EDH's thickness falls off
parabolically from its centre, with an arc short enough for its thickness that the inner
margin bulges toward the brain (a biconvex lens), and it ends where it reaches a suture.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .findings import EDH, SDH
from .phantom_ct_head import Head, suture_distance, uniform


def _angles(head: Head, idx: tuple[np.ndarray, ...], az: float, el: float) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth and elevation offsets (radians) of voxels ``idx`` from direction (az, el) degrees."""
    ph = head.phi[0][idx[1], idx[2]]
    dphi = np.angle(np.exp(1j * (ph - np.deg2rad(az)))).astype(np.float32)
    de = np.arcsin(np.clip(head.nw[idx], -1.0, 1.0)) - np.deg2rad(el)
    return dphi * np.float32(np.cos(np.deg2rad(el))), de.astype(np.float32)


def lens_profile(r: np.ndarray, power: float) -> np.ndarray:
    """EDH thickness over normalised angular radius ``r``: parabolic, convex toward the brain."""
    return np.clip(1.0 - r * r, 0.0, None) ** power


def crescent_profile(r: np.ndarray) -> np.ndarray:
    """SDH thickness over normalised angular radius: flat, tapering only near the tips."""
    return np.clip(1.0 - r**4, 0.0, None) ** 0.6


def _point(head: Head, az: float, el: float, radius_frac: float) -> np.ndarray:
    a, e = np.deg2rad(az), np.deg2rad(el)
    return np.array([head.A * np.cos(e) * np.cos(a), head.B * np.cos(e) * np.sin(a), head.C * np.sin(e)]) * radius_frac


def plan_lesions(rng: np.random.Generator, R: Any, head: Head, kind: str, el_range: tuple[float, float]) -> list[dict]:
    """Random extra-axial lesions (parameters only) for a case of ``kind``."""
    side = float(rng.choice([-1.0, 1.0]))
    plans = []
    wanted = {"sdh": [SDH], "edh": [EDH], "both": [SDH, EDH]}.get(kind, [])
    for n, label in enumerate(wanted):
        s = side if n == 0 else -side
        el = rng.uniform(*el_range)
        small = rng.random() < R.small_fraction
        if label == SDH:
            peak = uniform(rng, R.sdh_small_mm if small else R.sdh_thickness_mm)
            arcs = [uniform(rng, R.sdh_small_arc_deg if small else R.sdh_arc_deg) for _ in range(2)]
            subacute = rng.random() < R.subacute_fraction
            value = uniform(rng, R.sdh_subacute_hu if subacute else R.sdh_acute_hu)
            az = (0.0 if s > 0 else 180.0) + rng.uniform(-75, 75)
            plans.append({"label": SDH, "side": s, "az": az, "el": el, "peak_mm": peak, "arc_deg": arcs,
                          "hu": value, "subacute": subacute, "small": small,
                          "falx": rng.random() < R.sdh_falx_fraction})
        else:
            peak = uniform(rng, R.edh_small_mm if small else R.edh_thickness_mm)
            inner_r = 0.8 * min(head.A, head.B)
            a_max = np.rad2deg(np.sqrt(2.0 * peak / (inner_r - peak)))
            arcs = [float(a_max * rng.uniform(0.5, 0.9)) for _ in range(2)]
            for _ in range(20):  # a centre well inside one bone plate
                az = (0.0 if s > 0 else 180.0) + rng.uniform(-80, 80)
                p = _point(head, az, el, 0.85)
                dist = [suture_distance(k, v, *p) for k, v in head.sutures.items()]
                if min(abs(d) for d in dist) > 8.0:
                    break
                el = rng.uniform(*el_range)
            plans.append({"label": EDH, "side": s, "az": az, "el": el, "peak_mm": peak, "arc_deg": arcs,
                          "hu": uniform(rng, R.edh_hu), "small": small, "power": rng.uniform(0.5, 0.95),
                          "suture_sides": [1.0 if d > 0 else -1.0 for d in dist],
                          "taper_mm": rng.uniform(1.5, 4.0),
                          "fracture": rng.random() < R.fracture_fraction})
    swell = [(p["az"] + rng.uniform(-10, 10), p["el"]) for p in plans
             if p["label"] == EDH and rng.random() < R.scalp_swelling_fraction]
    if rng.random() < R.scalp_hematoma_fraction:  # an unrelated scalp hematoma
        swell.append((rng.uniform(0, 360), rng.uniform(*el_range)))
    for az, el in swell:
        plans.append({"label": 0, "az": az, "el": el, "peak_mm": rng.uniform(3.0, 14.0),
                      "arc_deg": [rng.uniform(15, 40)] * 2, "hu": rng.uniform(40.0, 70.0)})
    return plans


def swell_scalp(head: Head, plans: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Scalp hematomas push the skin outward; returns their voxels (flat) and HU."""
    flats, vals = [], []
    for p in plans:
        if p["label"] != 0:
            continue
        a = max(p["arc_deg"])
        idx = np.nonzero((head.cos_to(p["az"], p["el"]) > np.cos(np.deg2rad(a))) & (head.depth > -20.0)
                         & (head.depth < 25.0))
        da, de = _angles(head, idx, p["az"], p["el"])
        h = p["peak_mm"] * lens_profile(np.hypot(da, de) / np.deg2rad(a), 0.7)
        d = head.depth[idx] + h
        head.depth[idx] = d
        head.scalp[idx] += h  # skull and brain stay where they were
        inside = (d >= 0) & (d < h) & (h > 0.5)
        flats.append(np.ravel_multi_index(tuple(i[inside] for i in idx), head.depth.shape))
        vals.append(np.full(int(inside.sum()), p["hu"], np.float32))
    if not flats:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(flats), np.concatenate(vals)


def place_hematomas(rng: np.random.Generator, head: Head, b: np.ndarray, plans: list[dict]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, lesion HU and mass-effect shift of the brain for the SDH/EDH in ``plans``."""
    labels = np.zeros(b.shape, np.uint8)
    les_hu = np.zeros(b.shape, np.float32)
    pushed = np.zeros(b.shape, np.float32)
    for p in plans:
        if p["label"] == 0:
            continue
        a_az, a_el = np.deg2rad(p["arc_deg"][0]), np.deg2rad(p["arc_deg"][1])
        reach = float(pushed.max()) + p["peak_mm"] + 25.0
        idx = np.nonzero((head.cos_to(p["az"], p["el"]) > np.cos(max(a_az, a_el))) & (b > -0.5) & (b < reach))
        da, de = _angles(head, idx, p["az"], p["el"])
        r = np.hypot(da / a_az, de / a_el)
        X, Y, Z = head.X[0][idx[1], idx[2]], head.Y[0][idx[1], idx[2]], head.Z[:, 0, 0][idx[0]]
        wobble = 1.0 + 0.1 * np.sin(0.15 * (X + Y) + 0.2 * Z + rng.uniform(0, 6.3))
        if p["label"] == SDH:
            t = p["peak_mm"] * crescent_profile(r) * wobble
            t *= np.clip(p["side"] * X / 3.0, 0.0, 1.0)  # the falx stops it at the midline
        else:
            t = p["peak_mm"] * lens_profile(r, p["power"]) * wobble
            for (name, params), sgn in zip(head.sutures.items(), p["suture_sides"]):
                t *= np.clip(sgn * suture_distance(name, params, X, Y, Z) / p["taper_mm"], 0.0, 1.0) ** 0.5
        bb, pu = b[idx], pushed[idx]
        inside = (bb >= pu) & (bb < pu + t) & (t > 0.4)
        sel = tuple(i[inside] for i in idx)
        labels[sel] = p["label"]
        texture = 3.0 * np.sin(0.7 * X[inside]) * np.sin(0.6 * Y[inside] + 0.3 * Z[inside])
        les_hu[sel] = p["hu"] + texture
        pushed[idx] = pu + np.where(t > 0.4, t, 0.0)
        p["voxels"] = int(inside.sum())
    return labels, les_hu, pushed


def place_parafalcine(rng: np.random.Generator, head: Head, b: np.ndarray, plan: dict,
                      labels: np.ndarray, les_hu: np.ndarray) -> None:
    """A thin SDH along one side of the falx, tapering front and back."""
    X, Y, Z = head.X, head.Y, head.Z
    yc, ly = rng.uniform(-0.4, 0.4) * head.B, rng.uniform(15.0, 45.0)
    thick = rng.uniform(1.5, 5.0) * np.clip(1.0 - ((Y - yc) / ly) ** 2, 0.0, None)
    off = plan["side"] * X - 0.6
    m = (off > 0) & (off < thick) & (Z > head.tentorium_height(X, Y) + 3.0) & (b > 2.0) & (labels == 0)
    m &= Z > rng.uniform(-0.1, 0.3) * head.C
    labels[m] = SDH
    les_hu[m] = plan["hu"]


def _blob(head: Head, hu: np.ndarray, allowed: np.ndarray, centre: np.ndarray, radius: float,
          value: float, rim_mm: float = 0.0, rim_hu: float = 0.0, lobes: float = 0.0,
          rng: np.random.Generator | None = None) -> int:
    """Paint an irregular ellipsoidal blob (and an oedema rim) where ``allowed``; voxels painted."""
    X, Y = head.X[0], head.Y[0]
    ph = rng.uniform(0, 6.3) if rng is not None else 0.0
    n = 0
    for k in np.flatnonzero(np.abs(head.Z[:, 0, 0] - centre[2]) < radius + rim_mm):
        d = np.sqrt((X - centre[0]) ** 2 + ((Y - centre[1]) / 1.2) ** 2 + (head.Z[k, 0, 0] - centre[2]) ** 2)
        r_eff = radius * (1.0 + lobes * np.sin(3 * np.arctan2(Y - centre[1], X - centre[0]) + ph))
        ok = allowed[k]
        if rim_mm > 0:
            hu[k][(d < r_eff + rim_mm) & (d >= r_eff) & ok] = rim_hu
        core = (d < r_eff) & ok
        hu[k][core] = value
        n += int(core.sum())
    return n


def add_confounders(rng: np.random.Generator, R: Any, head: Head, hu: np.ndarray, b: np.ndarray,
                    bd: np.ndarray, parts: Any, kind: str, meta: dict) -> None:
    """Unlabelled look-alikes: parenchymal bleeds and contusions, subarachnoid and
    intraventricular blood, calcifications. None touches the inner table."""
    p = R.confounder_probability
    deep = (bd > 3.0) & (b > 3.0) & (hu > 0) & (hu < 60)
    if kind == "iph" or rng.random() < p:  # intraparenchymal bleed, deep
        r = uniform(rng, R.iph_radius_mm)
        az, el = rng.uniform(0, 360), rng.uniform(-5, 40)
        c = _point(head, az, el, rng.uniform(0.2, 0.55))
        n = _blob(head, hu, deep & (bd > 6.0), c, r, uniform(rng, R.iph_hu), 3.0, rng.uniform(10, 20), 0.2, rng)
        meta["iph"] = {"radius_mm": r, "voxels": n}
    if (kind == "iph" and rng.random() < 0.5) or rng.random() < p:  # contusions near the surface
        az = rng.choice([90.0, -90.0]) + rng.uniform(-40, 40)  # frontal or occipital pole
        near = (b > R.contusion_gap_mm) & (hu > 15) & (hu < 60)
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(2.0, 6.0)
            c = _point(head, az + rng.uniform(-15, 15), rng.uniform(-10, 30), 0.8)
            _blob(head, hu, near, c, r, rng.uniform(50.0, 80.0), 2.0, rng.uniform(12, 20), 0.25, rng)
        meta["contusion"] = True
    if parts.sulci.size and (kind == "iph" and rng.random() < 0.5 or rng.random() < p):  # SAH
        az, el = rng.uniform(0, 360), rng.uniform(0, 40)
        k, i, j = np.unravel_index(parts.sulci, hu.shape)
        da, de = _angles(head, (k, i, j), az, el)
        pick = parts.sulci[np.hypot(da, de) < np.deg2rad(rng.uniform(20, 50))]
        hu.flat[pick] = rng.uniform(45.0, 75.0)
        meta["sah_voxels"] = int(pick.size)
    if parts.ventricles.size and rng.random() < p / 2:  # intraventricular blood, dependent
        v = parts.ventricles
        yv = np.broadcast_to(head.Y, hu.shape).reshape(-1)[v]
        pick = v[yv > np.percentile(yv, rng.uniform(70, 90))]
        hu.flat[pick] = rng.uniform(45.0, 70.0)
        meta["ivh"] = True
    calc = [(np.array([0.0, 0.12 * head.B, -0.02 * head.C]), rng.uniform(1.5, 3.5))]  # pineal
    for s in (-1, 1):  # choroid plexus in the atria
        calc.append((np.array([s * 0.22 * head.A, 0.28 * head.B, 0.06 * head.C]), rng.uniform(1.0, 3.0)))
    brain = (b > 3.0) & (hu > -50) & (hu < 100)
    n = 0
    for c, r in calc:
        if rng.random() < 0.6:
            n += _blob(head, hu, brain, c, r, rng.uniform(120.0, 450.0)) > 0
    if parts.falx.size and rng.random() < 0.3:  # calcified falx
        f = parts.falx
        zf = np.broadcast_to(head.Z, hu.shape).reshape(-1)[f]
        yf = np.broadcast_to(head.Y, hu.shape).reshape(-1)[f]
        y0, z0 = rng.uniform(-0.5, 0.5) * head.B, rng.uniform(0.0, 0.5) * head.C
        hu.flat[f[(np.abs(yf - y0) < rng.uniform(4, 12)) & (np.abs(zf - z0) < 10)]] = rng.uniform(200, 600)
    meta["calcifications"] = n
