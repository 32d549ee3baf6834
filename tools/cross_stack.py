#!/usr/bin/env python3
"""
Does ``strun ceers_align`` give the same WCS on two jwst stacks, and do saved WCS models
written under one stack apply under the other?

    python tools/cross_stack.py --env-a .venvs/jwst-1.7.2 --env-b .venv

For each environment (a virtual environment with ceers-steps installed): the same synthetic
visit (8 SW detectors x 3 dithers, 1024 x 1024, seed 3: identical pixels and headers from
both stacks' numpy) is written by that stack itself, so each reads files of its own making;
``strun ceers_align`` aligns it to the synthetic reference catalog and saves the WCS models.
Then each stack applies the other's saved models with ``ceers-apply-wcs`` to its own cal
files. Every WCS is evaluated on a 16 x 16 pixel grid per image by the stack that wrote it;
the script prints the largest separations in mas:

- aligned under A vs aligned under B (the issue's "same WCS" criterion: <= 0.01 mas);
- A's saved models applied under B vs aligned under A, and B's under A vs aligned under B
  (or the error the reading stack gives, when asdf cannot read the other's files).

Exit status 1 when the aligned WCSs differ by more than 0.01 mas. Internally the script
calls itself in each environment (``--stage``).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

TOLERANCE_MAS = 0.01


def _stage_make(work):
    """Write the synthetic visit with this stack."""
    from ceers_steps.synthetic.visits import SW_DETECTORS, make_visit, write_visit

    visit = make_visit(detectors=SW_DETECTORS, n_dithers=3, shape=(1024, 1024), use_real=False,
                       seed=3)
    asn, refcat, paths = write_visit(visit, Path(work) / "calibrated")
    print(json.dumps({"asn": str(asn), "refcat": str(refcat), "cal": [str(p) for p in paths]}))


def _stage_grid(folder, pattern, out):
    """Evaluate each image's WCS on a 16 x 16 grid: {exposure: [ra, dec]} in degrees."""
    import numpy as np

    from ceers_steps.core.compat import datamodels
    from ceers_steps.io.wcs_models import exposure_base

    grid = {}
    for path in sorted(Path(folder).glob(pattern)):
        with datamodels.open(str(path)) as model:
            ny, nx = model.data.shape
            y, x = np.mgrid[0:ny - 1:16j, 0:nx - 1:16j]
            ra, dec = model.meta.wcs(x.ravel(), y.ravel(), with_bounding_box=False)
            grid[exposure_base(path.name)] = [list(map(float, ra)), list(map(float, dec))]
    Path(out).write_text(json.dumps(grid))
    print(len(grid))


def _versions(python):
    res = subprocess.run([python, "-c", "import jwst, asdf, gwcs, astropy; print(jwst.__version__,"
                          " asdf.__version__, gwcs.__version__, astropy.__version__)"],
                         capture_output=True, text=True, check=True)
    return dict(zip(("jwst", "asdf", "gwcs", "astropy"), res.stdout.split(), strict=True))


def _self(python, *args, check=True):
    res = subprocess.run([python, __file__, *map(str, args)], capture_output=True, text=True,
                         check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{python} {' '.join(map(str, args))} failed:\n{res.stderr[-3000:]}")
    return res


def _separation_mas(a, b):
    import numpy as np

    worst = 0.0
    for key in a:
        ra1, dec1 = np.radians(a[key])
        ra2, dec2 = np.radians(b[key])
        # Haversine: exact at micro-arcsecond separations.
        h = (np.sin((dec2 - dec1) / 2) ** 2
             + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2)
        worst = max(worst, float(np.degrees(2 * np.arcsin(np.sqrt(h))).max() * 3.6e6))
    return worst


def compare(env_a, env_b, work):
    work = Path(work)
    envs = {"A": Path(env_a), "B": Path(env_b)}
    python = {k: str(v / "bin" / "python") for k, v in envs.items()}
    info, grids = {}, {}
    for key in envs:
        folder = work / key
        made = json.loads(_self(python[key], "--stage", "make", folder).stdout.splitlines()[-1])
        info[key] = {**_versions(python[key]), **made}
        strun = str(envs[key] / "bin" / "strun")
        res = subprocess.run([strun, "ceers_align", made["asn"], f"--output_dir={folder / 'aligned'}",
                              f"--steps.tweakreg.abs_refcat={made['refcat']}", "--steps.tweakreg.minobj=8",
                              "--steps.tweakreg.abs_minobj=8"],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"strun ceers_align under {env_a if key == 'A' else env_b}:\n"
                               f"{res.stderr[-3000:]}")
        _self(python[key], "--stage", "grid", folder / "aligned", "*_tweakreg.fits",
              folder / "aligned.json")
        grids[key] = json.loads((folder / "aligned.json").read_text())
    rows = {"aligned A vs B": _separation_mas(grids["A"], grids["B"])}
    for writer, reader in (("A", "B"), ("B", "A")):
        out = work / f"{writer}_models_under_{reader}"
        cal_dir = Path(info[reader]["cal"][0]).parent
        res = subprocess.run([str(envs[reader] / "bin" / "ceers-apply-wcs"), "--all",
                              "--input-dir", str(cal_dir),
                              "--wcs-dir", str(work / writer / "aligned" / "tweakreg_wcs"),
                              "--output-dir", str(out)], capture_output=True, text=True,
                             check=False)
        label = f"{writer}'s saved models applied under {reader} vs aligned under {writer}"
        if res.returncode != 0:
            last = [line for line in res.stderr.splitlines() if line.strip()]
            rows[label] = f"not readable: {last[-1] if last else res.returncode}"
            continue
        _self(python[reader], "--stage", "grid", out, "*_tweakreg.fits", out / "grid.json")
        rows[label] = _separation_mas(json.loads((out / "grid.json").read_text()), grids[writer])
    return info, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--env-a", help="virtual environment A (e.g. .venvs/jwst-1.7.2)")
    p.add_argument("--env-b", help="virtual environment B (e.g. .venv)")
    p.add_argument("--work", default="cross_stack", help="work folder (default ./cross_stack)")
    p.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage:
        if args.stage[0] == "make":
            _stage_make(args.stage[1])
        else:
            _stage_grid(*args.stage[1:])
        return 0
    if not (args.env_a and args.env_b):
        p.error("--env-a and --env-b are required")
    info, rows = compare(args.env_a, args.env_b, args.work)
    for key in ("A", "B"):
        v = info[key]
        print(f"{key}: jwst {v['jwst']}, asdf {v['asdf']}, gwcs {v['gwcs']}, astropy {v['astropy']}")
    for label, value in rows.items():
        text = f"{value:.5f} mas" if isinstance(value, float) else value
        print(f"  {label}: {text}")
    same = rows["aligned A vs B"] <= TOLERANCE_MAS
    print(f"same WCS to {TOLERANCE_MAS} mas: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
