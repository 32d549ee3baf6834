"""
jwst's TweakRegStep parameters and rules, so that `CeersTweakRegStep` is a drop-in.

Plain functions: which catalog each image uses (jwst's ``use_custom_catalogs``
precedence), what jwst's star-finder parameters mean for our SEP detection, and
which jwst parameters are accepted but have no equivalent here.
"""

from pathlib import Path

from ..detection.jwst_finder import IGNORED, MAPPED

__all__ = [
    "IGNORED",
    "MAPPED",
    "choose_catalogs",
    "detection_parameters",
    "ignored_settings",
    "kernel_name",
    "parse_catfile",
]

def kernel_name(fwhm):
    """
    The detection filter for jwst's ``kernel_fwhm``: ``gauss_<fwhm>_<n>x<n>``.

    ``n = 2 int(fwhm) + 1`` reproduces Source Extractor's own filter files
    (gauss_1.5_3x3, gauss_2.0_5x5, gauss_2.5_5x5, gauss_3.0_7x7).
    """
    fwhm = float(fwhm)
    if not fwhm > 0:
        raise ValueError(f"kernel_fwhm must be positive (pixels), not {fwhm}")
    n = 2 * int(fwhm) + 1
    return f"gauss_{fwhm:g}_{n}x{n}"


def detection_parameters(pars):
    """
    The `DetectionParameters` a step's jwst star-finder parameters ask for.

    Parameters
    ----------
    pars : object
        Anything with the attributes of `MAPPED` (a step); None values keep the
        CEERS recipe.

    Returns
    -------
    DetectionParameters
    """
    from ..detection.sources import DetectionParameters

    kwargs = {}
    value = getattr(pars, "snr_threshold", None)
    if value is not None:
        kwargs["detect_thresh"] = value
    value = getattr(pars, "kernel_fwhm", None)
    if value is not None:
        kwargs["kernel"] = kernel_name(value)
    for jwst_name, ours in (("bkg_boxsize", "back_size"), ("npixels", "detect_minarea"),
                            ("nlevels", "deblend_nthresh"), ("contrast", "deblend_cont"),
                            ("brightest", "brightest"), ("peakmax", "peak_max")):
        value = getattr(pars, jwst_name, None)
        if value is not None:
            kwargs[ours] = value
    if getattr(pars, "deblend", None) is False:
        kwargs["deblend_cont"] = 1.0
    return DetectionParameters(**kwargs)


def ignored_settings(pars):
    """The `IGNORED` parameters a step sets away from jwst's defaults, as ``name=value``."""
    out = []
    for name, default in IGNORED.items():
        value = getattr(pars, name, default)
        if isinstance(value, (list, tuple)) and default is None:
            out.append(f"{name}={value!r}")
        elif value is not None and str(value) != str(default):
            out.append(f"{name}={value!r}")
    return out


def parse_catfile(catfile):
    """
    Read a jwst ``catfile``: lines ``<image file> [<catalog file>]``.

    Catalog paths are relative to the catfile's folder; a line with no catalog
    means "detect sources on this image". Blank lines and ``#`` comments are
    skipped.

    Returns
    -------
    dict
        Image file name -> catalog path, or None (no catalog named). Empty when
        the file names no image.
    """
    path = Path(catfile)
    if not path.exists():
        raise FileNotFoundError(f"catfile not found: {path}")
    catalogs = {}
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        image, *rest = line.split()
        if len(rest) > 1:
            raise ValueError(f"{path}, line {n}: 'catfile' can contain at most two columns "
                             f"('<image> <catalog>'), got {line!r}")
        catalogs[Path(image).name] = str(path.parent / rest[0]) if rest else None
    return catalogs


def choose_catalogs(images, use_custom_catalogs, catfile_map=None, asn_dir=None, log=None):
    """
    The catalog of each image, by jwst's rules (None: detect sources).

    jwst 3.x's precedence, exactly: with ``use_custom_catalogs`` off every image is
    detected. On, a non-empty ``catfile`` names the catalogs (one that names none
    turns custom catalogs off, with a warning); without a catfile, an association's
    ``tweakreg_catalog`` entries do (an empty entry means "detect"). An image
    neither names gets its ``meta.tweakreg_catalog`` when that is not blank.

    Parameters
    ----------
    images : list of tuple
        Per image ``(name, member, meta_catalog, path)``: its file name (jwst:
        ``meta.filename``), its association member dict (or ``{}``), its
        ``meta.tweakreg_catalog`` and the file it was read from (or None).
    use_custom_catalogs : bool
    catfile_map : dict or None
        `parse_catfile` of the step's ``catfile``; None when no catfile is given.
    asn_dir : Path or None
        The association's folder when the input was an association.
    log : logging.Logger, optional

    Returns
    -------
    list of str or None
    """
    if not use_custom_catalogs:
        return [None] * len(images)
    catdict = {}
    if catfile_map is not None:
        if not catfile_map:
            if log is not None:
                log.warning("'use_custom_catalogs' is set to True but 'catfile' contains no user "
                            "catalogs. Turning on built-in catalog creation.")
            return [None] * len(images)
        catdict = dict(catfile_map)
    elif asn_dir is not None:
        for _, member, _, _ in images:
            if "tweakreg_catalog" in member and member.get("expname"):
                value = member["tweakreg_catalog"]
                catdict[Path(member["expname"]).name] = (
                    str(Path(asn_dir) / value) if value is not None and str(value).strip()
                    else None)
    out = []
    for name, _, meta_catalog, path in images:
        if name not in catdict and meta_catalog is not None and str(meta_catalog).strip():
            catdict[name] = _beside(str(meta_catalog).strip(), path)
        out.append(catdict.get(name))
    return out


def _beside(catalog, image_path):
    """``meta.tweakreg_catalog`` as jwst reads it (from the working folder), or beside the
    image when it is not there (a path written relative to the image, see `fits_safe_path`)."""
    if image_path is not None and not Path(catalog).is_absolute() and not Path(catalog).exists():
        beside = Path(image_path).parent / catalog
        if beside.exists():
            return str(beside)
    return catalog
