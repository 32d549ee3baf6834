"""How far CEERS' own per-detector fits turned NIRCam's detectors against each other.

Usage:
    python benchmarks/bench_ceers_turns.py

Reads the 690 real CEERS tweaked WCS models (``../shared/ceers/tweakreg_wcs`` or
``$CEERS_DATA_DIR``): each carries the correction CEERS' TweakReg fitted for its
detector (per detector group: all dithers of one detector, one filter and visit),
a 2x2 matrix in the ``v2v3vacorr -> v2v3corr`` transform. A common pointing error
turns every detector of an exposure the same way; differences between detectors
are their own turns (plus each per-detector fit's noise, ~13 arcsec for a SW
detector with 30-60 galaxies). Prints, over the visit/group sets: module A minus
module B rotation of the SW detectors, each SW detector's rotation about its
module's mean, and the LW detectors' rotation and scale differences.
"""

import warnings
from collections import defaultdict
from pathlib import Path

import asdf
import numpy as np

from ceers_steps.fitting.visit_model import _rotation_deg
from ceers_steps.synthetic import ceers_data_dir


def correction_matrix(wcs):
    """The 2x2 linear part of the ``v2v3vacorr -> v2v3corr`` correction of a tweaked WCS."""
    transform = wcs.get_transform("v2v3vacorr", "v2v3corr")
    found = None
    for sub in transform.traverse_postorder():
        if hasattr(sub, "matrix"):
            m = np.array(getattr(sub.matrix, "value", sub.matrix), float)
            if m.shape in ((2, 2), (3, 3)):
                found = m[:2, :2]
    return found


def main():
    data = ceers_data_dir()
    if data is None:
        raise SystemExit("real CEERS data not found: set $CEERS_DATA_DIR or provide ../shared/ceers")
    turns = defaultdict(dict)  # (visit, group) -> detector -> (rotation arcsec, scale - 1)
    warnings.simplefilter("ignore")  # the files were written by asdf 2.12 / gwcs 0.18
    for path in sorted(Path(data, "tweakreg_wcs").glob("*_tweakreg.asdf")):
        visit, group, dither, detector = path.name.split("_")[:4]
        if dither != "00001":  # one fit per detector group: its dithers carry the same matrix
            continue
        with asdf.open(path) as af:
            m = correction_matrix(af["wcs"])
        if m is None:
            continue
        rotation = _rotation_deg(m) * 3600.0
        turns[visit, group][detector] = (rotation, np.sqrt(abs(np.linalg.det(m))) - 1.0)
    sw_ab, sw_about, lw_rot, lw_scale = [], [], [], []
    for fits in turns.values():
        a = [r for d, (r, _) in fits.items() if d.startswith("nrca") and not d.endswith("long")]
        b = [r for d, (r, _) in fits.items() if d.startswith("nrcb") and not d.endswith("long")]
        if a and b:
            sw_ab.append(np.mean(a) - np.mean(b))
            sw_about += list(np.array(a) - np.mean(a)) + list(np.array(b) - np.mean(b))
        if "nrcalong" in fits and "nrcblong" in fits:
            lw_rot.append(fits["nrcalong"][0] - fits["nrcblong"][0])
            lw_scale.append(fits["nrcalong"][1] - fits["nrcblong"][1])
    print(f"{sum(len(f) for f in turns.values())} detector fits in {len(turns)} visit/group sets "
          "(several sets repeat the same fit)")
    print(f"SW, module A minus module B rotation: median |difference| {np.median(np.abs(sw_ab)):.0f}"
          f" arcsec, range {min(sw_ab):.0f} to {max(sw_ab):.0f} arcsec")
    print(f"SW, each detector about its module's mean: rms {np.std(sw_about):.0f} arcsec "
          "(per-detector fit noise included)")
    print(f"LW, nrcalong minus nrcblong: rotation median |difference| {np.median(np.abs(lw_rot)):.0f}"
          f" arcsec, range {min(lw_rot):.0f} to {max(lw_rot):.0f}; scale median |difference| "
          f"{np.median(np.abs(lw_scale)):.1e}, range {min(lw_scale):.1e} to {max(lw_scale):.1e}")


if __name__ == "__main__":
    main()
