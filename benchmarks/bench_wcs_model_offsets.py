"""How far CEERS' real tweaks moved their images, against how far a wrong model would: the basis
of ApplyWcsStep's ``max_offset`` (a saved WCS model must put its image within it of the image's
own WCS).

Usage:
    python benchmarks/bench_wcs_model_offsets.py [--step N]

Reads the 690 real CEERS tweaked WCS models (``../shared/ceers/tweakreg_wcs`` or
``$CEERS_DATA_DIR``). Each is the pipeline WCS with CEERS' TweakReg correction (the
``tp_affine`` of the ``v2v3vacorr -> v2v3corr`` transform): with that correction set to the
identity, the model is the pipeline WCS the image had, so the tweak's size is the largest
distance between the two over a 5 x 5 grid of the image (`ceers_steps.io.wcs_models.wcs_offset_arcsec`).
Printed beside it: the smallest distance, over the same grid, between a model and the models of
the other dithers of its detector, and of the other detectors of its exposure: what applying a
model of another image would move it by.
"""

import argparse
import re
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from ceers_steps.io.wcs_models import MAX_WCS_OFFSET, read_wcs_model_file, wcs_offset_arcsec
from ceers_steps.synthetic import ceers_data_dir

_NAME = re.compile(r"(jw\d{11})_(\d{5})_(\d{5})_(nrc\w+?)_tweakreg\.asdf")
SHAPE = (2048, 2048)


def _untweaked(wcs):
    """The same WCS with its TweakReg correction (``tp_affine``) set to the identity."""
    import copy

    untweaked = copy.deepcopy(wcs)
    affine = untweaked.forward_transform["tp_affine"]
    affine.matrix = np.eye(2)
    affine.translation = [0.0, 0.0]
    return untweaked


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--step", type=int, default=1, help="every Nth model (1: all 690)")
    args = parser.parse_args()
    data = ceers_data_dir()
    if data is None:
        raise SystemExit("real CEERS data not found: set CEERS_DATA_DIR or provide ../shared/ceers")
    files = sorted((Path(data) / "tweakreg_wcs").glob("*_tweakreg.asdf"))[:: args.step]
    start = time.perf_counter()
    tweaks, models = [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            wcs = read_wcs_model_file(path).wcs
            tweaks.append(wcs_offset_arcsec(wcs, _untweaked(wcs), SHAPE))
            visit, group, dither, det = _NAME.fullmatch(path.name).groups()
            models[visit, group, dither, det] = wcs
    tweaks = np.array(tweaks)
    by_detector, by_exposure = defaultdict(list), defaultdict(list)
    for key in models:
        by_detector[key[0], key[1], key[3]].append(key)
        by_exposure[key[:3]].append(key)
    other_dither, other_detector = [], []
    for key, wcs in models.items():
        dithers = [k for k in by_detector[key[0], key[1], key[3]] if k != key]
        if dithers:
            other_dither.append(min(wcs_offset_arcsec(wcs, models[k], SHAPE) for k in dithers))
        # Detectors of one channel only: a relabelled file keeps its pixel scale and shape.
        lw = key[3].endswith("long")
        dets = [k for k in by_exposure[key[:3]] if k != key and k[3].endswith("long") == lw]
        if dets:
            other_detector.append(min(wcs_offset_arcsec(wcs, models[k], SHAPE) for k in dets))

    def stats(values):
        v = np.asarray(values)
        if not v.size:
            return "none (use --step 1)"
        return (f"{len(v)} models: min {v.min():.2f}, median {np.median(v):.2f}, "
                f"95% {np.percentile(v, 95):.2f}, max {v.max():.2f} arcsec")

    print(f"CEERS tweaked WCS models read: {len(files)} ({time.perf_counter() - start:.0f} s)")
    print(f"  tweak (model vs its pipeline WCS):        {stats(tweaks)}")
    print(f"  model of another dither, same detector:  {stats(other_dither)}")
    print(f"  model of another detector, same exposure: {stats(other_detector)}")
    print(f"  ApplyWcsStep max_offset default: {MAX_WCS_OFFSET:g} arcsec")


if __name__ == "__main__":
    main()
