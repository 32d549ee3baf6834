"""The joint fit's visit model: its terms, their columns in the design matrix, and their update.

``sky = A p + T + t_dither + u_detector (+ E_detector (A p - c))`` in the visit's tangent
plane (arcsec): a linear term ``A`` per channel (one rotation shared by the channels: the
telescope's roll), the common shift ``T``, one shift per dither after the first, one offset per
detector (summing to zero when every detector has one: the gauge), and each detector's own
small rotation (and scale) about its centre ``c``. `_Model` holds the current estimate,
`_Layout` the columns of the unknowns and the Jacobian of a detection's corrected position.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["FITGEOMETRIES"]

FITGEOMETRIES = ("shift", "rshift", "rscale", "general")


#: Linear columns per geometry beyond the shared rotation, and each one's Jacobian at (x, y).
_EXTRA_COLUMNS = {"shift": (), "rshift": (), "rscale": ("scale",),
                  "general": ("scale", "shear1", "shear2")}


def _column_jacobian(name, x, y):
    return {"rot": (-y, x), "scale": (x, y), "shear1": (x, -y), "shear2": (y, x)}[name]


def _step_matrix(sol, cols, fitgeometry):
    """The 2x2 update of one channel's linear term for a linearised step ``sol``."""
    theta = sol[cols["rot"]] if "rot" in cols else 0.0
    if fitgeometry == "rshift":  # stays a pure rotation
        return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    s = sol[cols["scale"]] if "scale" in cols else 0.0
    if fitgeometry == "rscale":
        return np.array([[1 + s, -theta], [theta, 1 + s]])
    if fitgeometry == "general":
        e1, e2 = sol[cols["shear1"]], sol[cols["shear2"]]
        return np.eye(2) + np.array([[s + e1, e2 - theta], [e2 + theta, s - e1]])
    return np.eye(2)


def _rotation_deg(m):
    return float(np.rad2deg(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))


class _Model:
    """
    Current estimate: linear term per channel, common shift, dither and detector shifts,
    and each detector's own small rotation (and scale) about its centre.
    """

    def __init__(self, n_dith, n_det, n_chan=1):
        self.matrix = np.repeat(np.eye(2)[None], n_chan, axis=0)
        self.shift = np.zeros(2)
        self.dither = np.zeros((n_dith, 2))
        self.detector = np.zeros((n_det, 2))
        self.det_rot = np.zeros(n_det)
        self.det_scale = np.zeros(n_det)
        self.det_centre = np.zeros((n_det, 2))

    def linear(self, p, chan):
        return np.einsum("nij,nj->ni", self.matrix[chan], p)

    def detector_matrix(self, k):
        """The small linear term (2, 2) of detector ``k`` about its centre."""
        r, s = self.det_rot[k], self.det_scale[k]
        return np.array([[s, -r], [r, s]])

    def apply(self, p, dith, det, chan):
        xlin = self.linear(p, chan)
        out = xlin + self.shift + self.dither[dith] + self.detector[det]
        if np.any(self.det_rot) or np.any(self.det_scale):
            d = xlin - self.det_centre[det]
            r, s = self.det_rot[det][:, None], self.det_scale[det][:, None]
            out = out + r * np.column_stack([-d[:, 1], d[:, 0]]) + s * d
        return out

    def copy(self):
        other = _Model(len(self.dither), len(self.detector), len(self.matrix))
        other.matrix, other.shift = self.matrix.copy(), self.shift.copy()
        other.dither, other.detector = self.dither.copy(), self.detector.copy()
        other.det_rot, other.det_scale = self.det_rot.copy(), self.det_scale.copy()
        other.det_centre = self.det_centre.copy()
        return other


@dataclass
class _Layout:
    """
    Columns of the unknowns: the linear terms (one rotation shared by the channels
    whose geometry has one: the telescope's roll; then each channel's scale and
    shears as its geometry asks), common shift ``T``, one shift per dither after
    the first, one per fitted detector. With ``gauge`` the offsets of those
    detectors sum to zero: the last one carries minus the others' sum (its own
    columns do not exist), so ``T`` stays their common part.
    """

    geometries: tuple
    absolute: bool
    n_dith: int
    fitted: tuple = ()
    gauge: tuple = ()
    rotated: tuple = ()
    centres: np.ndarray = None

    def __post_init__(self):
        geoms = self.geometries if self.absolute else ("shift",) * len(self.geometries)
        self.channel_geometry = geoms
        self.lin_cols = [{} for _ in geoms]
        col = 0
        if any(g != "shift" for g in geoms):
            for c, g in enumerate(geoms):
                if g != "shift":
                    self.lin_cols[c]["rot"] = 0
            col = 1
        for c, g in enumerate(geoms):
            for name in _EXTRA_COLUMNS[g]:
                self.lin_cols[c][name] = col
                col += 1
        self.n_lin = col
        self.t_col = col if self.absolute else None
        col += 2 if self.absolute else 0
        self.dither_col = {}
        for d in range(1, self.n_dith):
            self.dither_col[d] = col
            col += 2
        self.detector_col = {}
        last = self.gauge[-1] if self.gauge else None
        for k in self.fitted:
            if k != last:
                self.detector_col[k] = col
                col += 2
        # Detector rotations (and scales where the geometry has one) about each detector's
        # centre, summing to zero over the rotated detectors: the last one carries minus
        # the others' sum, so the common terms keep their meaning.
        self.rot_names = ("rot", "scale") if _EXTRA_COLUMNS[geoms[0]] else ("rot",)
        self.rotation_col = {}
        for k in self.rotated[:-1]:
            self.rotation_col[k] = col
            col += len(self.rot_names)
        self.k = col

    def design(self, xlin, dith, det, chan):
        """Jacobian (2, n, k) of the corrected positions of detections at ``xlin = A p``."""
        n = len(xlin)
        jac = np.zeros((2, n, self.k))
        for c, cols in enumerate(self.lin_cols):
            m = chan == c
            if cols and m.any():
                for name, col in cols.items():
                    jx, jy = _column_jacobian(name, xlin[m, 0], xlin[m, 1])
                    jac[0, m, col], jac[1, m, col] = jx, jy
        if self.t_col is not None:
            jac[0, :, self.t_col] = jac[1, :, self.t_col + 1] = 1.0
        for cols, ids in ((self.dither_col, dith), (self.detector_col, det)):
            for key, c in cols.items():
                m = ids == key
                jac[0, m, c] = jac[1, m, c + 1] = 1.0
        if self.gauge:
            m = det == self.gauge[-1]
            for key in self.gauge[:-1]:
                c = self.detector_col[key]
                jac[0, m, c] = jac[1, m, c + 1] = -1.0
        if self.rotated:
            d = xlin - self.centres[det]
            cols = {"rot": (-d[:, 1], d[:, 0]), "scale": (d[:, 0], d[:, 1])}
            last = self.rotated[-1]
            for key, c in self.rotation_col.items():
                for j, name in enumerate(self.rot_names):
                    for m, sign in ((det == key, 1.0), (det == last, -1.0)):
                        jac[0, m, c + j] = sign * cols[name][0][m]
                        jac[1, m, c + j] = sign * cols[name][1][m]
        return jac

    def rotation_rows(self, k):
        """Jacobian (len(rot_names), k) of detector ``k``'s own rotation (and scale)."""
        rows = np.zeros((len(self.rot_names), self.k))
        if k in self.rotation_col:
            rows[:, self.rotation_col[k]:self.rotation_col[k] + len(self.rot_names)] = np.eye(
                len(self.rot_names))
        elif self.rotated and k == self.rotated[-1]:
            for c in self.rotation_col.values():
                rows[:, c:c + len(self.rot_names)] -= np.eye(len(self.rot_names))
        return rows

    def detector_rows(self, k):
        """Jacobian (2, k) of detector ``k``'s offset."""
        rows = np.zeros((2, self.k))
        if k in self.detector_col:
            c = self.detector_col[k]
            rows[0, c] = rows[1, c + 1] = 1.0
        elif self.gauge and k == self.gauge[-1]:
            for key in self.gauge[:-1]:
                c = self.detector_col[key]
                rows[0, c] = rows[1, c + 1] = -1.0
        return rows

    def update(self, model, sol):
        """Apply the solution ``sol`` (a linearised step) to ``model``."""
        for c, cols in enumerate(self.lin_cols):
            if cols:
                model.matrix[c] = _step_matrix(sol, cols, self.channel_geometry[c]) @ model.matrix[c]
        if self.t_col is not None:
            model.shift = model.shift + sol[self.t_col:self.t_col + 2]
        for d, c in self.dither_col.items():
            model.dither[d] += sol[c:c + 2]
        fitted = set(self.fitted)
        for k in range(len(model.detector)):
            if k in self.detector_col:
                model.detector[k] += sol[self.detector_col[k]:self.detector_col[k] + 2]
            elif k not in fitted:
                model.detector[k] = 0.0
        if self.gauge:
            model.detector[self.gauge[-1]] = -sum(model.detector[k] for k in self.gauge[:-1])
        rotated = set(self.rotated)
        for k in range(len(model.detector)):
            if k in self.rotation_col:
                c = self.rotation_col[k]
                model.det_rot[k] += sol[c]
                if "scale" in self.rot_names:
                    model.det_scale[k] += sol[c + 1]
            elif k not in rotated:
                model.det_rot[k] = model.det_scale[k] = 0.0
        if self.rotated:
            others = list(self.rotation_col)
            model.det_rot[self.rotated[-1]] = -model.det_rot[others].sum()
            model.det_scale[self.rotated[-1]] = -model.det_scale[others].sum()


def _centre_gauge(model, gauge):
    """Move the mean offset of the ``gauge`` detectors into the common shift (same positions)."""
    if gauge:
        mean = model.detector[list(gauge)].mean(axis=0)
        model.detector[list(gauge)] -= mean
        model.shift = model.shift + mean
