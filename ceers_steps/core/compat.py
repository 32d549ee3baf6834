"""
What moved between jwst versions, in one place.

The package runs on jwst 1.7 (CEERS DR0.5's pipeline) up to the newest 3.x. What differs
between those stacks is looked up here, once; the rest of the package imports from this
module and never branches on versions itself:

- data models: ``jwst.datamodels`` (jwst < 1.10) or ``stdatamodels.jwst.datamodels``;
- the multi-image container: jwst's ``ModelContainer`` (jwst < 1.16, every model open) or
  ``ModelLibrary`` (models borrowed and shelved, optionally on disk). `make_library` returns
  what the running jwst's own TweakRegStep returns, so a drop-in stays a drop-in;
- tweakwcs' fitting functions and the named reference catalogs, which jwst 1.7-1.14 keep in
  ``jwst.tweakreg`` and newer stacks in ``stcal.tweakreg``;
- the catalog service query (``get_catalog``), whose signature changed;
- stpipe: which loggers it routes, how an empty configuration is made (how the console
  commands keep stpipe's console handlers out of their way: `ceers_steps.cli.console`);
- asdf's keyword for reading arrays into memory (``memmap=False``, asdf < 3.1
  ``copy_arrays=True``);
- pickling of WCS transforms, which astropy < 5.3 cannot do for projections and models with
  parameter validators: such models travel to worker processes as ASDF instead.
"""

import copy
import copyreg
import inspect
import io
import pickle

__all__ = [
    "DataModel",
    "HAS_MODEL_LIBRARY",
    "ImageModel",
    "JWST_VERSION",
    "catalog_service",
    "datamodels",
    "dqflags",
    "empty_config",
    "fetch_catalog",
    "is_library",
    "library_models",
    "make_library",
    "make_models_picklable",
    "open_asdf_in_memory",
    "stpipe_logger_names",
    "named_refcats",
    "tweakwcs_api",
    "written_library_of",
]

import jwst
from packaging.version import Version
from stdatamodels import DataModel

try:  # jwst >= 1.10: the data models live in stdatamodels
    from stdatamodels.jwst import datamodels
except ImportError:  # jwst 1.7-1.9
    from jwst import datamodels

dqflags = datamodels.dqflags
ImageModel = datamodels.ImageModel

#: The running jwst's version.
JWST_VERSION = Version(jwst.__version__.split("+")[0])

if JWST_VERSION < Version("1.16"):
    # jwst < 1.16 runs logging.config.dictConfig when jwst.associations is first imported
    # (by jwst.assign_wcs, for instance), closing every log handler set up before: a run's
    # log file would stop mid-run. Importing it now, with this package, does that first.
    import jwst.associations  # noqa: F401

try:
    from jwst.datamodels import ModelLibrary
except ImportError:  # jwst < 1.16: a ModelContainer holds every model open
    ModelLibrary = None

#: True when jwst's steps exchange ``ModelLibrary`` objects (jwst >= 1.16).
HAS_MODEL_LIBRARY = ModelLibrary is not None


def stpipe_logger_names(package_logger):
    """
    The loggers stpipe routes into a step's log (and ``cal_logs``), ``package_logger`` added.

    stpipe >= 0.8 routes only the names a step declares; older stpipe forwards every record
    that reaches the root logger, whose WARNING level ``package_logger`` would then inherit,
    so it is set to INFO here.
    """
    import logging

    from jwst.stpipe import Step

    base = getattr(Step, "get_stpipe_loggers", None)
    if base is None:
        logging.getLogger(package_logger).setLevel(logging.INFO)
        return ("jwst", "stpipe", "tweakwcs", package_logger)
    return (*tuple(base()), package_logger)


def empty_config(cls):
    """An empty stpipe configuration for step or pipeline class ``cls`` (no CRDS lookup)."""
    from stpipe.config_parser import ConfigObj, Section

    if hasattr(cls, "_empty_config"):  # stpipe >= 0.8
        return cls._empty_config()
    config = ConfigObj()
    if hasattr(cls, "step_defs"):
        config["steps"] = Section(config, config.depth + 1, config.main, name="steps")
    return config


def _container_class():
    # jwst's own datamodels package holds the container (stdatamodels never did).
    import jwst.datamodels

    return jwst.datamodels.ModelContainer


def is_library(obj):
    """True for a ``ModelLibrary`` (newer stacks) or a ``ModelContainer`` (older stacks)."""
    if HAS_MODEL_LIBRARY and isinstance(obj, ModelLibrary):
        return True
    return any(c.__name__ == "ModelContainer" for c in type(obj).__mro__)


def make_library(models):
    """
    The multi-image product jwst's own steps return: a ``ModelLibrary`` of ``models``
    (jwst >= 1.16), else a ``ModelContainer``.
    """
    if HAS_MODEL_LIBRARY:
        return ModelLibrary(list(models))
    return _container_class()(list(models))


def library_models(library):
    """The models of a library or container (a library's left shelved), a list, or one model."""
    if isinstance(library, (list, tuple)):
        return list(library)
    if HAS_MODEL_LIBRARY and isinstance(library, ModelLibrary):
        with library:
            models = [library.borrow(i) for i in range(len(library))]
            for i, model in enumerate(models):
                library.shelve(model, i, modify=False)
        return models
    if is_library(library):
        return list(library)
    return [library]


_WRITTEN_LIBRARY = None


def written_library_of(asn, outputs=False):
    """
    The step result over complete files on disk, described by association dict ``asn``
    (member ``expname`` and ``tweakreg_catalog`` absolute paths).

    On ``ModelLibrary`` stacks the models are opened only when borrowed and stpipe does not
    finalize them (that would load the whole visit). On older stacks a ``ModelContainer``:
    of the file paths, opened when read, for outputs (which record their catalog
    themselves); else of the opened files, each with its ``meta.tweakreg_catalog`` from the
    association, as jwst's steps of that time exchanged them.
    """
    global _WRITTEN_LIBRARY
    if HAS_MODEL_LIBRARY:
        if _WRITTEN_LIBRARY is None:
            class WrittenLibrary(ModelLibrary):
                """A library of complete files: models load on borrow, stpipe does not finalize."""

                def finalize_result(self, step, reference_files_used):
                    pass

            _WRITTEN_LIBRARY = WrittenLibrary
        library = _WRITTEN_LIBRARY(asn)
    elif outputs:
        # Files opened only when the container is read (a command-line run never does).
        members = asn["products"][0]["members"]
        library = _container_class()([m["expname"] for m in members], save_open=False)
    else:
        models = []
        for member in asn["products"][0]["members"]:
            model = datamodels.open(member["expname"])
            if member.get("tweakreg_catalog"):
                model.meta.tweakreg_catalog = member["tweakreg_catalog"]
            models.append(model)
        library = _container_class()(models)
    library.outputs_written = outputs
    return library


def _jwst_tweakreg_attribute(name):
    """``name`` where the running jwst's TweakRegStep finds it, else None."""
    for module in ("stcal.tweakreg.tweakreg", "jwst.tweakreg.tweakreg_step"):
        try:
            return getattr(__import__(module, fromlist=[name]), name)
        except (ImportError, AttributeError):
            continue
    return None


def tweakwcs_api():
    """
    tweakwcs' ``align_wcs`` and ``XYXYMatch``, looked up where the running jwst's
    TweakRegStep looks them up (``stcal.tweakreg.tweakreg``, else ``jwst.tweakreg``), so
    that what patches jwst's step patches ours too.
    """
    align_wcs = _jwst_tweakreg_attribute("align_wcs")
    match = _jwst_tweakreg_attribute("XYXYMatch")
    if align_wcs is None or match is None:
        from tweakwcs.imalign import align_wcs
        from tweakwcs.matchutils import XYXYMatch as match
    return align_wcs, match


def named_refcats(default):
    """The catalog names jwst's ``abs_refcat`` fetches (``GAIADR3``...), else ``default``."""
    names = _jwst_tweakreg_attribute("SINGLE_GROUP_REFCAT")
    return default if names is None else names


def catalog_service():
    """The module whose ``get_catalog`` queries STScI's catalog service for jwst's step."""
    try:
        from stcal.tweakreg import astrometric_utils
    except ImportError:  # jwst < 1.15
        from jwst.tweakreg import astrometric_utils
    return astrometric_utils


def fetch_catalog(ra, dec, epoch, radius, name, timeout):
    """
    A reference catalog from STScI's catalog service (jwst's ``get_catalog``): ``radius``
    in degrees, ``epoch`` a decimal year; older jwst queries at the catalog's own epoch
    and with its default timeout.
    """
    get_catalog = catalog_service().get_catalog
    accepted = inspect.signature(get_catalog).parameters
    kwargs = {"catalog": name}
    kwargs["search_radius" if "search_radius" in accepted else "sr"] = radius
    if "epoch" in accepted:
        kwargs["epoch"] = epoch
    if "timeout" in accepted:
        kwargs["timeout"] = timeout
    return get_catalog(ra, dec, **kwargs)


def open_asdf_in_memory(source):
    """``asdf.open`` of a path or file object, every array read into memory (no memory map)."""
    import asdf

    if "memmap" in inspect.signature(asdf.open).parameters:
        return asdf.open(source, lazy_load=False, memmap=False)
    return asdf.open(source, lazy_load=False, copy_arrays=True)


def _model_from_asdf(data):
    with open_asdf_in_memory(io.BytesIO(data)) as af:
        return af.tree["model"]


def _model_to_asdf(model):
    import asdf

    buffer = io.BytesIO()
    asdf.AsdfFile({"model": model}).write_to(buffer)
    return _model_from_asdf, (buffer.getvalue(),)


def _deepcopy_model(model, memo):
    # What copy.deepcopy does for a model without our pickling fallback: its own state.
    return copy._reconstruct(model, memo, *model.__reduce_ex__(4))


def _copy_model(model):
    return copy._reconstruct(model, None, *model.__reduce_ex__(4))


_PICKLING_CHECKED = False


def make_models_picklable():
    """
    Let astropy models pickle (to reach worker processes) on stacks where they cannot.

    astropy < 5.3 cannot pickle its projections (``Pix2Sky_TAN``...) nor models whose
    parameters have validators (``AffineTransformation2D``), so no gwcs WCS pickles there.
    Those model classes (and compound models, which hold their leaves' parameters) are
    registered with `copyreg` to travel as ASDF, inverse and bounding box included; `copy`
    keeps copying them as before (`copyreg` would send copies through ASDF too). On newer
    astropy nothing is registered. Idempotent; runs when this module is imported.
    """
    global _PICKLING_CHECKED
    if _PICKLING_CHECKED:
        return
    _PICKLING_CHECKED = True
    from astropy.modeling import CompoundModel, Model
    from astropy.modeling import models as astropy_models

    try:
        pickle.dumps(astropy_models.Pix2Sky_TAN())
        pickle.dumps(astropy_models.AffineTransformation2D())
        return
    except Exception:  # noqa: BLE001 - any pickling failure: register the fallback
        pass
    # A compound model holds its leaves' parameters (and their validators) itself.
    classes = [CompoundModel]
    for name in dir(astropy_models):
        cls = getattr(astropy_models, name)
        if not (inspect.isclass(cls) and issubclass(cls, Model)):
            continue
        try:
            instance = cls()
        except Exception:  # noqa: BLE001 - needs arguments: pickles or not, left as it is
            continue
        try:
            pickle.dumps(instance)
        except Exception:  # noqa: BLE001
            classes.append(cls)
    for cls in classes:
        copyreg.pickle(cls, _model_to_asdf)
        copy._deepcopy_dispatch[cls] = _deepcopy_model
        copy._copy_dispatch[cls] = _copy_model


make_models_picklable()
