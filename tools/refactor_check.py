#!/usr/bin/env python3
"""
Same inputs, two codes: the benchmark visits for checking that a refactor changes nothing.

    PYTHONPATH=OLD python tools/refactor_check.py make-inputs DIR
    PYTHONPATH=OLD python tools/refactor_check.py run DIR OUT_OLD
    PYTHONPATH=NEW python tools/refactor_check.py run DIR OUT_NEW
    python tools/compare_outputs.py OUT_OLD OUT_NEW

``make-inputs`` writes four cases' ``*_cal.fits`` and reference catalogs with fixed seeds
(the real CEERS WCS models as truth and the real HST F160W catalog, as the benchmarks use;
``../shared/ceers`` or ``$CEERS_DATA_DIR``), frames cut to ``--shape`` pixels (1024 by
default, as bench_channels and bench_survey; 2048 is full size):

- ``sw``: one SW visit in F200W, 8 detectors x 3 dithers (bench_alignment ``--case sw``);
- ``sw-det``: the same with 30 mas rms per-detector placement errors (``--case sw-det``);
- ``lw``: one LW visit in F444W, 2 detectors x 3 dithers (``--case lw``);
- ``channels``: one visit in F200W and F444W sharing its exposures' errors (bench_channels'
  ``channels`` case), run as a survey with ``--all --joint-channels``.

``run`` runs ``ceers-align`` (its entry point in the ``pyproject.toml`` of the tree that
``ceers_steps`` is imported from, called by this Python in a subprocess: the code under test is
whatever ``PYTHONPATH`` or the installed package gives) on each case into
``OUT/<case>/`` with ``--save-results`` (aligned ``*_tweakreg.fits`` as well as the WCS
models), the package's own parameter files, the case's reference catalog and ``--n-jobs``
workers (2 by default). Each case's exit status and command (paths relative to DIR and OUT)
go to ``OUT/<case>.run.json`` and its console to ``OUT/<case>.console.txt``. The working
directory of each run is OUT, so no ``./parameter_files`` of a checkout is picked up.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SW = ("nrca1", "nrca2", "nrca3", "nrca4", "nrcb1", "nrcb2", "nrcb3", "nrcb4")
LW = ("nrcalong", "nrcblong")
VISIT = "jw01345001001"
#: case -> (ceers-align arguments after the command name, without folders and refcat)
CASES = {
    "sw": [VISIT, "f200w"],
    "sw-det": [VISIT, "f200w"],
    "lw": [VISIT, "f444w"],
    "channels": ["--all", "--joint-channels"],
}


def _save(visit, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for image in visit.images:
        image.model.save(folder / image.model.meta.filename)


def make_inputs(root, shape, seed):
    import numpy as np

    from ceers_steps.synthetic import ceers_data_dir, make_visit

    if ceers_data_dir() is None:
        sys.exit("refactor_check: the real CEERS data are needed (../shared/ceers or "
                 "$CEERS_DATA_DIR)")
    root = Path(root)
    common = {"n_dithers": 3, "shape": (shape, shape), "use_real": True, "visit_id": VISIT}
    for case in CASES:
        folder = root / case
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        t0 = time.perf_counter()
        if case == "channels":
            # As bench_channels.build_channels: SW and LW images of the same exposures.
            rng = np.random.default_rng(seed)
            both = {**common, "group": "02201", "visit_shift": tuple(rng.uniform(-0.5, 0.5, 2)),
                    "dither_shift": rng.normal(0.0, 0.020, (3, 2))}
            sw = make_visit(detectors=SW, filter_name="F200W", seed=seed * 100 + 1, **both)
            lw = make_visit(detectors=LW, filter_name="F444W", seed=seed * 100 + 2,
                            center=sw.center, **both)
            visits = [sw, lw]
        else:
            lw = case == "lw"
            visits = [make_visit(detectors=LW if lw else SW, seed=seed,
                                 detector_error=0.03 if case == "sw-det" else 0.0, **common)]
        for visit in visits:
            _save(visit, folder / "cal")
        # The union of the visits' reference catalogs (one visit: its own).
        refcat = visits[0].refcat
        refcat.write(folder / "refcat.ecsv", overwrite=True)
        n = sum(len(v.images) for v in visits)
        print(f"{case}: {n} images {shape}x{shape}, {len(refcat)} reference sources "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


def console_entry(env, cwd):
    """
    ``(module, function)`` of ``ceers-align`` in the code under test: from the
    ``pyproject.toml`` of the tree ``ceers_steps`` is imported from (with ``env``), else from
    the installed package's metadata. Not the installed script: it is made by the last
    ``pip install -e`` and names the installed tree's module, which a refactor moves.
    """
    code = ("import ceers_steps, pathlib; "
            "print(pathlib.Path(ceers_steps.__file__).resolve().parent.parent)")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                         text=True, check=True)
    root = Path(res.stdout.strip())
    pyproject = root / "pyproject.toml"
    if pyproject.exists():
        import tomllib

        target = tomllib.loads(pyproject.read_text())["project"]["scripts"]["ceers-align"]
    else:
        from importlib.metadata import entry_points

        target = next(iter(entry_points(group="console_scripts", name="ceers-align"))).value
    module, function = target.split(":")
    return root, module, function


def command(case, inputs, out, n_jobs, entry):
    _, module, function = entry
    exe = [sys.executable, "-c", f"import sys; from {module} import {function} as main; "
           "sys.argv[0] = 'ceers-align'; sys.exit(main())"]
    return [*exe, *CASES[case], "--input-dir", str(inputs / case / "cal"), "--output-dir",
            str(out / case), "--abs-refcat", str(inputs / case / "refcat.ecsv"), "--save-results",
            "--n-jobs", str(n_jobs)]


def run(inputs, out, n_jobs, cases):
    inputs, out = Path(inputs).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CRDS", "STPIPE", "CEERS_PARAMETER"))}
    entry = console_entry(env, out)
    print(f"ceers-align = {entry[1]}:{entry[2]} of {entry[0]}", flush=True)
    worst = 0
    for case in cases:
        if not (inputs / case / "cal").is_dir():
            sys.exit(f"refactor_check: no {inputs / case / 'cal'}; run make-inputs first")
        shutil.rmtree(out / case, ignore_errors=True)
        cmd = command(case, inputs, out, n_jobs, entry)
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t0
        (out / f"{case}.console.txt").write_text(res.stdout + res.stderr)
        shown = ["ceers-align"] + [
            a.replace(str(inputs), "INPUTS").replace(str(out), "OUT") for a in cmd[3:]]
        (out / f"{case}.run.json").write_text(json.dumps(
            {"case": case, "command": shown, "exit": res.returncode}, indent=1) + "\n")
        print(f"{case}: exit {res.returncode} in {seconds:.0f} s", flush=True)
        # Exit 1 (some images FAILED) is a result to compare; 2 and above are not.
        if res.returncode not in (0, 1):
            print(res.stderr[-2000:], file=sys.stderr)
            worst = 1
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    mk = sub.add_parser("make-inputs", help="write the cases' cal files and refcats")
    mk.add_argument("dir")
    mk.add_argument("--shape", type=int, default=1024, help="frame side, pixels (1024)")
    mk.add_argument("--seed", type=int, default=1)
    rn = sub.add_parser("run", help="run ceers-align on each case")
    rn.add_argument("dir")
    rn.add_argument("out")
    rn.add_argument("--n-jobs", type=int, default=2)
    rn.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    args = parser.parse_args()
    if args.action == "make-inputs":
        import warnings

        warnings.simplefilter("ignore")
        make_inputs(args.dir, args.shape, args.seed)
        return 0
    return run(args.dir, args.out, args.n_jobs, args.cases)


if __name__ == "__main__":
    sys.exit(main())
