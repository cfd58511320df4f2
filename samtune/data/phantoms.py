"""Synthetic coronary-CTA-like phantoms (samtune.data.layouts.phantoms writes them as ASOCA /
ImageCAS).

A chest in air (-1000 HU): body (tissue 40), lungs (-850), heart (fat -90, myocardium 110, blood
pool 220) and two coronary trees (left/right) on the heart surface: curved tubes running mostly
along z, trunk → branches → sub-branches, radius 2.0 → 0.8 mm, lumen 300–450 HU. `diseased` adds
stenoses (radius -40…70 %) and calcified plaques (700–1000 HU balls beside the lumen, unlabelled);
`lesions` adds ≤ 3 hypodense balls (-10…25 HU; fewer if no room) in tissue or blood pool, clear
of the arteries, NOT labelled (ASOCA/ImageCAS label coronaries only). Noise + 3-tap smoothing
(σ 0.5 voxel) leave σ ≈ 25 HU; image int16 clipped to [-1024, 3071]; label uint8, 1 = voxel
centre inside a tube; the two trees never touch (one 26-connected component each, if healthy).
Geometry is in mm in the grid frame (x, y, z) = (i·sx, j·sy, k·sz) and scales with the field of
view (shape × spacing); radii are physical but multiplied by max(1, 1.5·max(sx, sy) / 0.8 mm), so
the thinnest tube keeps a 1.5-voxel radius (3.0 → 1.2 mm at 0.8 mm, the 64×64×48 default).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

GENERATOR_VERSION = 1  # bump when make_phantom changes: stale phantom folders are rewritten
AIR, TISSUE, LUNG, FAT, MYOCARDIUM, BLOOD = -1000.0, 40.0, -850.0, -90.0, 110.0, 220.0
TRUNK_RADIUS_MM, TIP_RADIUS_MM, MIN_TIP_VOXELS = 2.0, 0.8, 1.5
NOISE_HU, SMOOTH_W = 25.0, 0.125  # smoothing kernel [w, 1-2w, w]: σ = sqrt(2w) = 0.5 voxel


@dataclass
class Branch:
    """A vessel: centreline `points` N×3 (mm, grid frame), `radii` N (mm), `lumen_hu` N; `theta`,
    `offset` N: angle around the heart axis and distance in heart radii."""
    tree: str
    parent: int | None
    points: np.ndarray
    radii: np.ndarray
    lumen_hu: np.ndarray
    theta: np.ndarray = field(repr=False)
    offset: np.ndarray = field(repr=False)


@dataclass
class Ball:
    """A plaque or lesion: `centre` (3, mm, grid frame), `radius` mm, `hu`."""
    centre: np.ndarray
    radius: float
    hu: float


@dataclass
class Anatomy:
    """One phantom's geometry (no voxels). `stenoses`: (branch, point index, fraction of the
    radius lost at the narrowest point)."""
    shape: tuple[int, int, int]
    spacing: np.ndarray
    heart_centre: np.ndarray
    heart_axes: np.ndarray
    branches: list[Branch] = field(default_factory=list)
    stenoses: list[tuple[int, int, float]] = field(default_factory=list)
    plaques: list[Ball] = field(default_factory=list)
    lesions: list[Ball] = field(default_factory=list)

    def heart_scale(self, z: np.ndarray) -> np.ndarray:
        """Heart cross-section scale at z mm (1 mid-volume, 0.75 at both ends)."""
        half = (self.shape[2] - 1) * self.spacing[2] / 2
        return 0.75 + 0.25 * (1 - ((np.asarray(z) - half) / half) ** 2)

    def heart_q(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Squared normalised heart radius: ≤ 0.64 blood pool, ≤ 1 myocardium, ≤ 1.69 fat."""
        u = (x - self.heart_centre[0]) / self.heart_axes[0]
        v = (y - self.heart_centre[1]) / self.heart_axes[1]
        return (u * u + v * v) / self.heart_scale(z) ** 2

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray):
        """(slices, [x, y, z] voxel-centre mm) of the grid part within [lo_mm, hi_mm]; or None."""
        lo = np.maximum(np.floor(lo_mm / self.spacing), 0).astype(int)
        hi = np.minimum(np.ceil(hi_mm / self.spacing) + 1, self.shape).astype(int)
        if np.any(hi <= lo):
            return None
        return (tuple(slice(a, b) for a, b in zip(lo, hi)),
                [np.arange(a, b) * s for a, b, s in zip(lo, hi, self.spacing)])


def _vessel(an: Anatomy, rng, tree, parent, z0, z1, theta0, off0, kappa, r, hu, step) -> Branch:
    """A tube from z0 down to z1 mm on the heart surface; kappa: initial dθ/dz (rad/mm)."""
    d = np.arange(0.0, z0 - z1, step / 1.4)
    t = d / (z0 - z1)
    ramp = np.clip(t / 0.15, 0, 1) ** 2 * (3 - 2 * np.clip(t / 0.15, 0, 1))  # straight root
    amp, waves, phase = rng.uniform(0.08, 0.25), rng.uniform(0.6, 1.6), rng.uniform(0, 6.3)
    drift, decay = rng.uniform(-0.3, 0.3), rng.uniform(0.12, 0.25) * an.shape[2] * an.spacing[2]
    theta = theta0 + kappa * decay * (1 - np.exp(-d / decay)) \
        + ramp * (drift * t + amp * (np.sin(2 * np.pi * waves * t + phase) - np.sin(phase)))
    offset = off0 + ramp * 0.05 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t)
    rho = offset * an.heart_scale(z0 - d)
    pts = np.stack([an.heart_centre[0] + rho * an.heart_axes[0] * np.cos(theta),
                    an.heart_centre[1] + rho * an.heart_axes[1] * np.sin(theta), z0 - d], axis=1)
    return Branch(tree, parent, pts, r[0] + (r[1] - r[0]) * t, hu[0] + (hu[1] - hu[0]) * t,
                  theta, offset)


def _clear(an: Anatomy, new: Branch, gap: float, skip: set[int]) -> bool:
    """True if tube `new` stays `gap` mm away from every vessel not in `skip` (its ancestors)."""
    others = [b for i, b in enumerate(an.branches) if i not in skip]
    if not others:
        return True
    pts = np.concatenate([b.points for b in others])
    radii = np.concatenate([b.radii for b in others])
    d, nn = cKDTree(pts).query(new.points, k=min(8, len(pts)),
                               distance_upper_bound=new.radii.max() + radii.max() + gap)
    d, nn = d.reshape(len(new.points), -1), np.minimum(nn, len(pts) - 1).reshape(len(d), -1)
    return bool(np.all(d > new.radii[:, None] + radii[nn] + gap))


def _grow(an: Anatomy, rng, idx: int, r_tip: float, step: float, sign: int, gap: float) -> None:
    """Add 2–3 branches to a trunk, 0–1 to a branch; a branch that would touch another vessel is
    redrawn (up to 8 times, then dropped)."""
    p, z_floor, skip = an.branches[idx], 0.03 * (an.shape[2] - 1) * an.spacing[2], {idx}
    if p.parent is not None:
        skip.add(p.parent)  # the ancestors (trees are two levels deep)
    for c in range(int(rng.integers(2, 4)) if len(skip) == 1 else int(rng.random() < 0.6)):
        for _attempt in range(8):
            k = int(rng.uniform(0.12, 0.55) * (len(p.points) - 1))
            z_bp, r0 = p.points[k, 2], max(0.75 * p.radii[k], r_tip)
            length = rng.uniform(0.45, 0.95) * (z_bp - z_floor)
            rho = p.offset[k] * an.heart_scale(z_bp) * np.sqrt(np.prod(an.heart_axes))
            kappa = (sign if c % 2 == 0 else -sign) * np.tan(np.radians(rng.uniform(30, 55))) / rho
            new = _vessel(an, rng, p.tree, idx, z_bp, z_bp - length, p.theta[k], p.offset[k],
                          kappa, (r0, r_tip), (p.lumen_hu[k], p.lumen_hu[k] - 30), step)
            if length >= 4 * r0 and _clear(an, new, gap, skip):
                an.branches.append(new)
                if len(skip) == 1:
                    _grow(an, rng, len(an.branches) - 1, r_tip, step, sign, gap)
                break


def make_anatomy(shape: tuple[int, int, int], spacing: tuple[float, float, float], *, seed: int,
                 diseased: bool = False, lesions: bool = True) -> Anatomy:
    """A phantom's geometry (trees, stenoses, plaques, lesions) in mm; deterministic in `seed`."""
    shape, sp = tuple(int(s) for s in shape), np.asarray(spacing, float)
    if len(shape) != 3 or min(shape) < 16 or sp.shape != (3,) or not np.all(sp > 0):
        raise ValueError(f"phantoms need 3 sizes ≥ 16 and 3 spacings > 0 mm, got {shape}, {sp}")
    streams = [np.random.default_rng([seed % 2**63, i]) for i in range(3)]  # geometry, disease, …
    fov, rng, zmax = np.array(shape) * sp, streams[0], (shape[2] - 1) * sp[2]
    centre = (np.array(shape[:2]) - 1) * sp[:2] / 2
    an = Anatomy(shape, sp, centre + fov[:2] * (np.array([0.03, 0.05]) + rng.uniform(-.02, .02, 2)),
                 fov[:2] * np.array([0.20, 0.17]) * rng.uniform(0.93, 1.07))
    scale = max(1.0, MIN_TIP_VOXELS * max(sp[:2]) / TIP_RADIUS_MM)
    r_trunk, r_tip = TRUNK_RADIUS_MM * scale, TIP_RADIUS_MM * scale
    step, hu_root = min(0.5 * sp.min(), 0.25 * r_tip), rng.uniform(400, 440)
    gap = 1.5 * sp[:2].max()  # between tubes of different vessels, so labels never touch
    for tree, theta0 in (("left", rng.uniform(1.9, 2.3)), ("right", rng.uniform(0.2, 0.6))):
        for attempt in range(20):
            z0, z1 = rng.uniform(0.90, 0.95) * zmax, rng.uniform(0.04, 0.08) * zmax
            trunk = _vessel(an, rng, tree, None, z0, z1, theta0, 1.12, 0.0,
                            (r_trunk, 0.65 * r_trunk), (hu_root, hu_root - 30), step)
            if attempt == 19 or _clear(an, trunk, gap, set()):
                an.branches.append(trunk)
                break
    for idx, sign in ((0, 1), (1, -1)):
        _grow(an, rng, idx, r_tip, step, sign, gap)
    if diseased:
        _add_disease(an, streams[1], 1.5 * sp.max())
    if lesions:
        _add_lesions(an, streams[2], fov, r_trunk)
    return an


def _add_disease(an: Anatomy, rng, r_min: float) -> None:
    """2–5 calcified balls touching the lumen wall, 1–3 of them at a stenosis."""
    n_stenoses = int(rng.integers(1, 4))
    for event in range(n_stenoses + int(rng.integers(1, 3))):
        b_idx = int(rng.integers(len(an.branches)))
        b = an.branches[b_idx]
        k = int(rng.uniform(0.2, 0.8) * (len(b.points) - 1))
        r_k, tangent = float(b.radii[k]), b.points[k + 1] - b.points[k - 1]
        if event < n_stenoses:
            severity = rng.uniform(0.4, 0.7)
            arc = np.r_[0, np.cumsum(np.linalg.norm(np.diff(b.points, axis=0), axis=1))]
            width = rng.uniform(1.5, 3.0) * r_k
            b.radii = b.radii * (1 - severity * np.exp(-((arc - arc[k]) / width) ** 2))
            an.stenoses.append((b_idx, k, float(severity)))
        v = rng.standard_normal(3)
        n = v - (v @ tangent) / (tangent @ tangent) * tangent
        radius = max(rng.uniform(0.5, 0.9) * r_k, r_min)
        an.plaques.append(Ball(b.points[k] + n / np.linalg.norm(n) * (r_k + 0.5 * radius),
                               radius, rng.uniform(700, 1000)))


def _add_lesions(an: Anatomy, rng, fov: np.ndarray, r_trunk: float) -> None:
    """≤ 3 hypodense balls wholly in soft tissue or deep in the blood pool, clear of every tube."""
    pts, hi = np.concatenate([b.points for b in an.branches]), (np.array(an.shape) - 1) * an.spacing
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(40):
            radius = max(rng.uniform(0.03, 0.06) * fov[:2].min(), 2 * an.spacing.max())
            c = rng.uniform(radius, hi - radius)
            probe = c + radius * np.vstack([np.zeros(3), np.eye(3), -np.eye(3)])
            q = an.heart_q(*probe.T)
            kind = np.where(q <= 0.4, BLOOD, np.where(q <= 1.69, FAT, _body_hu(an, *probe.T[:2])))
            if (np.all(kind == BLOOD) or np.all(kind == TISSUE)) and \
                    np.min(np.linalg.norm(pts - c, axis=1)) > radius + 1.5 * r_trunk:
                an.lesions.append(Ball(c, float(radius), rng.uniform(-10, 25)))
                break


def _body_hu(an: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Air / tissue / lungs at in-plane positions x, y (mm); no heart."""
    u = (x / an.spacing[0] - (an.shape[0] - 1) / 2) / an.shape[0]  # fractions of the FOV
    v = (y / an.spacing[1] - (an.shape[1] - 1) / 2) / an.shape[1]
    lungs = ((np.abs(u) - 0.23) / 0.16) ** 2 + ((v + 0.03) / 0.27) ** 2 <= 1
    return np.where(lungs, LUNG, np.where((u / 0.46) ** 2 + (v / 0.40) ** 2 <= 1, TISSUE, AIR))


def _inside(an: Anatomy, p: np.ndarray, r: np.ndarray):
    """(slices, mask) of the voxels whose centre is in a ball (p M×3 mm, r M mm); None if none."""
    if (hit := an.box(p.min(0) - r.max(), p.max(0) + r.max())) is None:
        return None
    x, y, z = hit[1]
    d2 = (x[:, None, None, None] - p[:, 0]) ** 2 + (y[None, :, None, None] - p[:, 1]) ** 2 \
        + (z[None, None, :, None] - p[:, 2]) ** 2
    return hit[0], np.any(d2 <= np.asarray(r) ** 2, axis=-1)


def _smooth3(a: np.ndarray, w: float) -> None:
    """In place: kernel [w, 1-2w, w] along each axis, edges replicated; slab-wise (C-order fast)."""
    def along(t: np.ndarray) -> np.ndarray:
        padded = np.concatenate([t[:1], t, t[-1:]])
        return (1 - 2 * w) * t + w * (padded[:-2] + padded[2:])
    for i in range(a.shape[0]):
        a[i] = along(along(a[i]).T).T
    prev = a[0].copy()
    for i in range(a.shape[0]):  # along i, carrying the unsmoothed previous slab
        prev, a[i] = a[i].copy(), (1 - 2 * w) * a[i] + w * (prev + a[min(i + 1, a.shape[0] - 1)])


def make_phantom(shape: tuple[int, int, int], spacing: tuple[float, float, float], *, seed: int,
                 diseased: bool = False, lesions: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A coronary-CTA-like volume: (image int16 HU I×J×K, label uint8 I×J×K, 1 = artery); spacing
    in mm along i, j, k. Same arguments → identical arrays (random streams 0–3 of `seed`)."""
    an = make_anatomy(shape, spacing, seed=seed, diseased=diseased, lesions=lesions)
    x, y, z = (np.arange(n) * s for n, s in zip(an.shape, an.spacing))
    image = np.empty(an.shape, np.float32)
    image[...] = _body_hu(an, x[:, None], y[None, :])[:, :, None]
    reach = np.append(1.3 * an.heart_axes, 0)
    sl, (hx, hy, hz) = an.box(np.append(an.heart_centre, 0) - reach,
                              np.append(an.heart_centre, z[-1]) + reach)
    q = an.heart_q(hx[:, None, None], hy[None, :, None], hz[None, None, :])
    for limit, hu in ((1.69, FAT), (1.0, MYOCARDIUM), (0.64, BLOOD)):
        image[sl][q <= limit] = hu
    for ball in an.lesions:
        if hit := _inside(an, ball.centre[None], np.array([ball.radius])):
            image[hit[0]][hit[1]] = ball.hu
    label = np.zeros(an.shape, np.uint8)
    for b in an.branches:  # union of balls along the centreline, 24 points at a time
        for s in range(0, len(b.points), 24):
            if hit := _inside(an, b.points[s:s + 24], b.radii[s:s + 24]):
                label[hit[0]] |= hit[1].astype(np.uint8)
                image[hit[0]][hit[1]] = float(b.lumen_hu[s:s + 24].mean())
    for ball in an.plaques:
        if hit := _inside(an, ball.centre[None], np.array([ball.radius])):
            image[hit[0]][hit[1] & (label[hit[0]] == 0)] = ball.hu
    gain = ((1 - 2 * SMOOTH_W) ** 2 + 2 * SMOOTH_W ** 2) ** 1.5  # noise std kept by smoothing
    rng = np.random.default_rng([seed % 2**63, 3])  # noise
    for i in range(0, an.shape[0], 32):
        noise = rng.standard_normal(image[i:i + 32].shape, np.float32)
        image[i:i + 32] += noise * np.float32(NOISE_HU / gain)
    _smooth3(image, SMOOTH_W)
    return np.clip(np.rint(image, out=image), -1024, 3071, out=image).astype(np.int16), label


def phantom_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float], *,
                   negative_direction: bool = False, origin=None) -> np.ndarray:
    """4×4 voxel → world (RAS+, mm). `negative_direction` flips j; the default origin puts the
    volume's centre at world (0, 0, 0)."""
    m = np.diag(np.asarray(spacing, float) * [1, -1 if negative_direction else 1, 1])
    origin = -m @ ((np.array(shape) - 1) / 2) if origin is None else np.asarray(origin, float)
    return np.vstack([np.c_[m, origin], [0, 0, 0, 1]])
