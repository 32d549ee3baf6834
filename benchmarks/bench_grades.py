"""Are the report's grades right? Grades against each image's true error, over many draws.

Usage:
    python benchmarks/bench_grades.py [--cases sw sw-det lw] [--seeds 1 2 3 4 5]
        [--artifacts] [--shift-one MAS] [--real|--builtin]

For every draw of every case (as in bench_alignment.py: 3 dithers x 8 SW or 2 LW
detectors, 2048x2048, real CEERS WCS truth when present, ``sw-det`` with 30 mas
detector placement errors), SEP catalogs with the CEERS recipe and CeersTweakRegStep
(default joint fit, CEERS jw01345001001 parameters) with the report on. Prints per
case the grades given and, per grade, the images' true error at their centre
(aligned against true WCS, mas): a good grade should mean a small true error. With
``--shift-one``, one image's catalog is shifted (a wrong catalog, or a WCS the model
cannot describe): how often is that image graded down, and are the others still good?
"""

import argparse
import re
import tempfile
from pathlib import Path

import numpy as np
from bench_alignment import CEERS_LW, CEERS_SW, add_truth_options, quiet, truth_choice

from ceers_steps import CeersTweakRegStep
from ceers_steps.core.wcs_utils import angular_separation_mas
from ceers_steps.detection.catalogs import build_catalog, write_catalog
from ceers_steps.io.inputs import library_models
from ceers_steps.synthetic.visits import LW_DETECTORS, SW_DETECTORS, make_visit


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=("sw", "sw-det", "lw"),
                        default=["sw", "sw-det", "lw"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--artifacts", action="store_true", help="realistic cal-file nuisances")
    parser.add_argument("--shift-one", type=float, default=0.0, metavar="MAS",
                        help="shift the catalog of one image (the 5th) by MAS along x: is it "
                             "graded down, and only it?")
    add_truth_options(parser)
    args = parser.parse_args()
    quiet()
    from ceers_steps.core.compat import make_library

    use_real = truth_choice(args)
    for case in args.cases:
        lw = case == "lw"
        errors = {"good": [], "check": [], "poor": []}
        reasons, shifted = [], []
        for seed in args.seeds:
            visit = make_visit(detectors=LW_DETECTORS if lw else SW_DETECTORS, n_dithers=3,
                               use_real=use_real, seed=seed, artifacts=args.artifacts,
                               detector_error=0.03 if case == "sw-det" else 0.0)
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                visit.refcat.write(tmp / "refcat.ecsv")
                for k, image in enumerate(visit.images):
                    path = tmp / image.model.meta.filename.replace(".fits", "_cat.ecsv")
                    cat = build_catalog(image.model)
                    if k == 4 and args.shift_one:
                        scale = 0.063 if lw else 0.031  # arcsec per pixel
                        cat["xcentroid"] += args.shift_one / 1e3 / scale
                    write_catalog(cat, path)
                    image.model.meta.tweakreg_catalog = str(path)
                step = CeersTweakRegStep(abs_refcat=str(tmp / "refcat.ecsv"),
                                         output_dir=str(tmp / "out"), save_report=True,
                                         **(CEERS_LW if lw else CEERS_SW))
                out = library_models(step.run(make_library([im.model.copy()
                                                            for im in visit.images])))
                html = next(iter(step.report_paths.values())).read_text()
            grade = dict(re.findall(r"<tr data-image='([^']+)'>.*?data-col='grade'>(\w+)<", html,
                                    re.S))
            why = dict(re.findall(r"<tr data-image='([^']+)'>.*?class='reason'>([^<]*)<", html,
                                  re.S))
            shifted.append(grade[visit.images[4].model.meta.filename])
            for m, image in zip(out, visit.images, strict=True):
                c = (1023.5, 1023.5)
                err = float(angular_separation_mas(*m.meta.wcs(*c), *image.true_wcs(*c)))
                g = grade[m.meta.filename]
                errors[g].append(err)
                if g != "good":
                    reasons.append(f"seed {seed} {m.meta.filename}: {g}: {why[m.meta.filename]} "
                                   f"(true error {err:.2f} mas)")
        n = sum(len(v) for v in errors.values())
        print(f"{case}{' realistic' if args.artifacts else ''}: {n} images over "
              f"{len(args.seeds)} draws")
        for g, v in errors.items():
            if v:
                print(f"  {g:5s} {len(v):4d} ({len(v) / n:.1%}): true centre error median "
                      f"{np.median(v):.2f}, max {np.max(v):.2f} mas")
        if args.shift_one:
            print(f"  the image whose catalog is shifted {args.shift_one:g} mas: "
                  + ", ".join(f"{g} {shifted.count(g)}" for g in ("good", "check", "poor")))
        for line in reasons:
            print(f"    {line}")


if __name__ == "__main__":
    main()
