"""Head geometry and normal anatomy for the CT-like phantoms of ``segmenter.phantom_ct``.

Everything is built in a head frame (X patient left, Y posterior, Z superior, mm) on a crop
of the image that holds the head. A voxel's position is summarised by its direction from the
head centre (unit vector ``n`` in ellipsoid-normalised coordinates) and its depth inward from
the skin; scalp, skull tables and brain layers are shells in depth, so a lesion of thickness
``t`` can be slid in under the inner table and push the brain inward (mass effect).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Bone, fat and CSF values (HU).
CSF_HU = (0.0, 10.0)
FAT_HU = (-110.0, -70.0)


def uniform(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def harmonics(rng: np.random.Generator, angle: np.ndarray, orders: tuple[int, ...], amp: float) -> np.ndarray:
    """Smooth random periodic function of an angle: a few sines with random phases."""
    out = np.zeros(angle.shape, np.float32)
    for k in orders:
        out += (amp / k) * np.sin(k * angle + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    return out


@dataclass
class Head:
    """Coordinates of the crop and the head's shells; arrays broadcast to (nz, h, w)."""

    X: np.ndarray  # (1, h, w) mm
    Y: np.ndarray  # (1, h, w) mm
    Z: np.ndarray  # (nz, 1, 1) mm
    A: float
    B: float
    C: float
    phi: np.ndarray  # (1, h, w) azimuth of the direction, radians (0 = patient left)
    nw: np.ndarray  # (nz, h, w) sine of the direction's elevation
    depth: np.ndarray  # (nz, h, w) mm inward from the skin
    base: np.ndarray  # (nz, 1, 1) 0 above the skull base, 1 deep in it
    scalp: np.ndarray  # (nz, h, w) scalp thickness
    skull: np.ndarray  # (nz, h, w) skull thickness
    sutures: dict[str, tuple[float, ...]]
    tentorium: tuple[float, float, float]  # apex height, lateral and posterior slopes

    def tentorium_height(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Height (mm) of the tentorium over (X, Y): a tent sloping down laterally and backwards."""
        apex, lat, post = self.tentorium
        return apex - lat * np.abs(X) - post * np.clip(Y - 0.05 * self.B, 0.0, None)

    @property
    def below_table(self) -> np.ndarray:
        """Depth below the inner table (mm): negative in bone and scalp."""
        return self.depth - self.scalp - self.skull

    def cos_to(self, az: float, el: float) -> np.ndarray:
        """Cosine of the angle between each voxel's direction and (azimuth, elevation) in degrees."""
        a, e = np.deg2rad(az), np.deg2rad(el)
        out = self.nh * (np.cos(self.phi - a) * np.float32(np.cos(e)))
        out += self.nw * np.float32(np.sin(e))
        return out

    @property
    def nh(self) -> np.ndarray:
        """Cosine of each voxel direction's elevation (computed once)."""
        if getattr(self, "_nh", None) is None:
            self._nh = np.sqrt(np.clip(1.0 - self.nw * self.nw, 0.0, 1.0))
        return self._nh


def build_head(rng: np.random.Generator, shape: tuple[int, int, int], ps: float, dz: float,
               scale: float, rotation_deg: float, offset_mm: tuple[float, float],
               skull_mm: float) -> tuple[Head, tuple[slice, slice]]:
    """Geometry of a random head on an image of ``shape``; returns it and the crop it covers."""
    nz, ny, nx = shape
    A, B, C = 70.0 * scale * rng.uniform(0.93, 1.05), 88.0 * scale * rng.uniform(0.96, 1.04), 78.0 * scale
    top = C * rng.uniform(0.82, 1.0)
    z0 = max(top - (nz - 1) * dz, -0.62 * C)
    z = (z0 + dz * np.arange(nz, dtype=np.float32)).astype(np.float32)
    cy, cx = offset_mm
    # Crop: the head's bounding circle (plus room for scalp swelling), in pixels.
    half = (max(A, B) * 1.12 + 18.0) / ps
    r0, c0 = (ny - 1) / 2 + cy / ps, (nx - 1) / 2 + cx / ps
    rows = slice(int(max(0, r0 - half)), int(min(ny, r0 + half + 1)))
    cols = slice(int(max(0, c0 - half)), int(min(nx, c0 + half + 1)))
    yy = ((np.arange(rows.start, rows.stop, dtype=np.float32) - (ny - 1) / 2) * ps - cy)[:, None]
    xx = ((np.arange(cols.start, cols.stop, dtype=np.float32) - (nx - 1) / 2) * ps - cx)[None, :]
    th = np.deg2rad(rotation_deg)
    X = (np.cos(th) * xx + np.sin(th) * yy).astype(np.float32)[None]
    Y = (-np.sin(th) * xx + np.cos(th) * yy).astype(np.float32)[None]
    Z = z[:, None, None]
    u, v, w = X / A, Y / B, Z / C
    r2 = u * u + v * v  # (1, h, w)
    q = np.sqrt(r2 + w * w) + np.float32(1e-6)
    nw = (w / q).astype(np.float32)
    phi = np.arctan2(v, u).astype(np.float32)
    # Skin: the ellipsoid with low-order bumps that fade towards the vertex; flat-ish occiput.
    bumps = harmonics(rng, phi, (2, 3, 5), 0.03) - 0.02 * np.clip(v / np.sqrt(r2 + 1e-6), 0, 1) ** 4
    rho = np.sqrt(X * X + Y * Y + Z * Z)
    depth = rho * ((1.0 + bumps * (1.0 - nw * nw)) / q - 1.0)
    base = np.clip((-Z / C - 0.18) / 0.32, 0.0, 1.0).astype(np.float32)
    # Scalp: thin skin and fat, with temporalis muscle laterally at mid and low levels.
    lateral = np.abs(np.cos(phi)) ** 6
    temporal = np.clip(1.0 - np.abs(Z / C + 0.1) / 0.4, 0.0, 1.0)
    scalp = rng.uniform(3.5, 6.0) * (1.0 + harmonics(rng, phi, (1, 2, 3), 0.15)) + 5.0 * lateral * temporal
    # Skull: thicker towards the base, in the frontal and occipital bone; thin temporal squama.
    skull = skull_mm * (1.0 + 0.35 * base) * (1.0 + harmonics(rng, phi, (2, 3, 4), 0.12)
                                            + 0.2 * np.abs(np.sin(phi)) - 0.25 * lateral * temporal)
    sutures = {"coronal": (-0.12 * B * rng.uniform(0.7, 1.3), rng.uniform(0.1, 0.25), rng.uniform(0, 6.3)),
               "lambdoid": (0.62 * B * rng.uniform(0.9, 1.1), rng.uniform(0.3, 0.45), rng.uniform(0, 6.3)),
               "squamosal": (-0.1 * C * rng.uniform(0.5, 1.5), rng.uniform(0.1, 0.2), rng.uniform(0, 6.3)),
               "sagittal": (0.0, 0.0, rng.uniform(0, 6.3))}
    head = Head(X, Y, Z, A, B, C, phi, nw, depth.astype(np.float32), base[:, None, None].reshape(nz, 1, 1),
                scalp.astype(np.float32), skull.astype(np.float32), sutures,
                (-0.15 * C * rng.uniform(0.8, 1.2), rng.uniform(0.25, 0.4), rng.uniform(0.3, 0.5)))
    return head, (rows, cols)


def suture_distance(name: str, params: tuple[float, ...], X: np.ndarray, Y: np.ndarray,
                    Z: np.ndarray) -> np.ndarray:
    """Signed distance-like coordinate (mm) to a suture surface, zig-zagging a little."""
    c, k, ph = params
    zig = 0.9 * np.sin(0.5 * (X + Z) + ph)
    if name == "coronal":  # frontal/parietal, leaning back towards the vertex
        return Y - c - k * Z + zig
    if name == "lambdoid":  # parietal/occipital, an inverted V seen from behind
        return c - 0.35 * np.abs(X) + k * Z - Y + zig
    if name == "squamosal":  # temporal squama, low on the side
        return Z - c + k * Y + 0.6 * zig
    return X + 0.5 * zig  # sagittal


def suture_code(head: Head, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Bit ``i`` set where the voxel lies on the positive side of suture ``i``: voxels with
    the same code lie on the same bone plate (as far as this phantom's sutures go)."""
    code = np.zeros(np.broadcast_shapes(X.shape, Y.shape, Z.shape), np.uint8)
    for i, (name, params) in enumerate(head.sutures.items()):
        code |= (suture_distance(name, params, X, Y, Z) > 0).astype(np.uint8) << i
    return code


def suture_gaps(head: Head, idx: tuple[np.ndarray, ...], width_mm: float) -> np.ndarray:
    """Which of the voxels ``idx`` (bone) lie in a suture's gap."""
    X, Y, Z = head.X[0][idx[1], idx[2]], head.Y[0][idx[1], idx[2]], head.Z[:, 0, 0][idx[0]]
    d = {n: suture_distance(n, p, X, Y, Z) for n, p in head.sutures.items()}
    vault = Z > -0.15 * head.C
    between = (d["coronal"] > 0) & (d["lambdoid"] > 0)
    gap = (np.abs(d["coronal"]) < width_mm) & vault
    gap |= np.abs(d["lambdoid"]) < width_mm
    gap |= (np.abs(d["sagittal"]) < width_mm) & between & (Z > 0.3 * head.C)
    gap |= (np.abs(d["squamosal"]) < width_mm) & between & (np.abs(X) > 0.6 * head.A)
    return gap
