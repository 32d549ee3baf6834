"""Write pipelines/calwebb_image3_ceers.asdf, the stage-3 parameter file (run from the repo root).

    python pipelines/make_calwebb_image3_ceers.py

The file runs `ceers_steps.stage3.CeersImage3Pipeline`: jwst's calwebb_image3 with
the CEERS alignment (`CeersAlignPipeline`: SEP catalogs + CeersTweakRegStep) as its
``tweakreg`` step, configured with the most common values of the 30 CEERS visit
sections (the step defaults; rshift is the SW geometry, LW used rscale; per-visit
values are in parameter_files/). Everything after
alignment is jwst's, with jwst's defaults.
"""

from pathlib import Path

from ceers_steps.survey.cfgconvert import STEP_CLASSES, write_parameter_file

CATALOG = {"detect_thresh": 4.0, "detect_minarea": 16, "deblend_nthresh": 4}
TWEAKREG = {
    "group_by": "detector", "fitgeometry": "shift", "use2dhist": False,
    "enforce_user_order": True, "expand_refcat": False, "minobj": 20, "searchrad": 1.0,
    "separation": 0.1, "tolerance": 0.02, "nclip": 1, "sigma": 0.6,
    "abs_refcat": "", "abs_group": "joint", "abs_minobj": 20, "abs_searchrad": 1.0,
    "abs_use2dhist": True, "abs_separation": 0.2, "abs_tolerance": 0.1,
    "abs_fitgeometry": "rshift", "abs_nclip": 1, "abs_sigma": 0.7,
}

TREE = {
    "class": "ceers_steps.stage3.CeersImage3Pipeline",
    "name": "calwebb_image3_ceers",
    "meta": {
        "description": "calwebb_image3 with the CEERS alignment as tweakreg. Set the reference "
                       "catalog with --steps.tweakreg.steps.tweakreg.abs_refcat=<file>; per-visit "
                       "CEERS values are in parameter_files/<visit>_<filter>.asdf.",
    },
    "parameters": {},
    "steps": [
        {
            "class": "ceers_steps.pipeline.CeersAlignPipeline",
            "name": "tweakreg",
            "parameters": {},
            "steps": [
                {"class": STEP_CLASSES["catalog"], "name": "catalog", "parameters": CATALOG},
                {"class": STEP_CLASSES["tweakreg"], "name": "tweakreg", "parameters": TWEAKREG},
            ],
        },
    ],
}

if __name__ == "__main__":
    out = write_parameter_file(TREE, Path(__file__).parent / "calwebb_image3_ceers.asdf")
    print(f"wrote {out}")
