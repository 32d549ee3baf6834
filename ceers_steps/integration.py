"""Entry point for stpipe: the steps and pipelines this package provides."""


def get_steps():
    """
    Describe the `stpipe.Step` subclasses of this package.

    Registered under the ``stpipe.steps`` entry point group. Imports nothing,
    so that ``stpipe list`` and ``strun`` stay fast.

    Returns
    -------
    list of tuple (str, str, bool)
        Fully qualified class name, class alias, and whether it is a pipeline.
    """
    return [
        ("ceers_steps.steps.catalog_step.CatalogStep", "ceers_catalog", False),
        ("ceers_steps.steps.tweakreg_step.CeersTweakRegStep", "ceers_tweak", False),
        ("ceers_steps.steps.apply_wcs_step.ApplyWcsStep", "apply_wcs", False),
        ("ceers_steps.steps.pipeline.CeersAlignPipeline", "ceers_align", True),
        ("ceers_steps.steps.stage3.CeersImage3Pipeline", "calwebb_image3_ceers", True),
    ]
