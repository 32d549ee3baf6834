"""
jwst's star-finder parameters as our SEP detection sees them: those that set it
(`MAPPED`) and those accepted with jwst's defaults and not used (`IGNORED`).

Plain tables, read by the stages (`ceers_steps.stages.jwstpars`) and by the
alignment report's parameter table (`ceers_steps.report.html`).
"""

__all__ = ["IGNORED", "MAPPED"]

#: jwst's star-finder parameters that set our SEP detection (when the step detects
#: sources itself), and what they set. Unset (None) keeps the CEERS recipe.
MAPPED = {
    "snr_threshold": "detect_thresh (threshold in units of the RMS)",
    "kernel_fwhm": "kernel: a Gaussian of this FWHM (pixels) on a (2 int(fwhm) + 1)^2 grid",
    "bkg_boxsize": "back_size (background mesh, pixels)",
    "npixels": "detect_minarea (connected pixels)",
    "nlevels": "deblend_nthresh",
    "contrast": "deblend_cont",
    "deblend": "False: no deblending (deblend_cont = 1)",
    "brightest": "keep the N brightest sources (AUTO flux)",
    "peakmax": "drop sources whose peak pixel is >= peakmax",
}

#: jwst parameters accepted (with jwst's defaults) and not used: they belong to
#: jwst's photutils star finders or its memory model, which SEP and our
#: streaming of files through workers replace.
IGNORED = {
    "starfinder": "iraf",
    "minsep_fwhm": 0.0,
    "sigma_radius": 1.5,
    "sharplo": 0.5,
    "sharphi": 2.0,
    "roundlo": 0.0,
    "roundhi": 0.2,
    "connectivity": "8",
    "multithresh_mode": "exponential",
    "localbkg_width": 0,
    "apermask_method": "correct",
    "kron_params": None,
    "in_memory": True,
}
