"""Reference catalogs: proper motions and epochs, several catalogs, cuts, weights, saved catalog."""

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time
from conftest import accuracy, library_of, models_of, module_tmp

from ceers_steps import CeersTweakRegStep
from ceers_steps.core.wcs_utils import sky_difference_mas
from ceers_steps.refcat import at_epoch, read_reference_catalogs

#: The synthetic visits are observed at MJD 59800 (2022-08-14).
OBSERVED = Time(59800.002, format="mjd")


def _moving_catalog(refcat, seed=0, common=(-15.0, 10.0), dispersion=8.0):
    """
    Proper motions of 5-50 mas/yr (a common reflex motion plus a dispersion) for the
    true positions at the observation epoch; positions moved back to 2016.0 by astropy.
    """
    rng = np.random.default_rng(seed)
    pm = np.asarray(common) + rng.normal(0, dispersion, (len(refcat), 2))
    speed = np.hypot(pm[:, 0], pm[:, 1])
    pm *= (np.clip(speed, 5, 50) / speed)[:, None]
    now = SkyCoord(ra=refcat["RA"] * u.deg, dec=refcat["DEC"] * u.deg,
                   pm_ra_cosdec=pm[:, 0] * u.mas / u.yr, pm_dec=pm[:, 1] * u.mas / u.yr,
                   distance=2 * u.kpc, obstime=OBSERVED)
    then = now.apply_space_motion(new_obstime=Time(2016.0, format="jyear"))
    n = len(refcat)
    return Table({"ra": then.ra.deg, "dec": then.dec.deg, "pmra": pm[:, 0], "pmdec": pm[:, 1],
                  "parallax": np.full(n, 0.5), "ref_epoch": np.full(n, 2016.0),
                  "ra_error": np.full(n, 0.3), "dec_error": np.full(n, 0.3),
                  "pmra_error": np.full(n, 0.2), "pmdec_error": np.full(n, 0.2),
                  "phot_g_mean_mag": np.asarray(refcat["MAG"]) - 1.0})


@pytest.fixture(scope="module")
def catalogs(request, builtin_visit, tmp_path_factory):
    d = module_tmp(request, tmp_path_factory, "refcats")
    truth = Table.read(builtin_visit["refcat"])
    gaia = _moving_catalog(truth)
    paths = {"true": d / "true_epoch.ecsv", "gaia": d / "gaia_like.ecsv",
             "nopm": d / "gaia_without_pm.ecsv"}
    Table({"ra": truth["RA"], "dec": truth["DEC"], "mag": truth["MAG"]}).write(paths["true"])
    gaia.write(paths["gaia"])
    gaia["ra", "dec"].write(paths["nopm"])
    return {"dir": d, "truth": truth, "gaia_table": gaia, **paths}


def _align(visit, refcat, **kwargs):
    step = CeersTweakRegStep(abs_refcat=str(refcat), save_fit_results=False, **kwargs)
    return models_of(step.run(library_of(visit))), step


def _difference(a, b):
    return max(float(sky_difference_mas(m.meta.wcs, n.meta.wcs, m.data.shape, 8).max())
               for m, n in zip(a, b, strict=True))


def test_proper_motions_propagated_to_the_visit_epoch(builtin_visit, catalogs):
    v = builtin_visit["visit"]
    at_truth, _ = _align(v, catalogs["true"])
    propagated, _ = _align(v, catalogs["gaia"])
    frozen, _ = _align(v, catalogs["nopm"])
    # Without propagation the 2016 positions are ~6.6 yr x ~18 mas/yr off: a visible error.
    assert accuracy(frozen, v)[0] > 50
    # With it, the result is that of aligning to the true epoch positions.
    assert _difference(propagated, at_truth) < 0.5
    assert accuracy(propagated, v)[0] < 3


def test_catalog_epoch_parameter_and_epoch_strings(builtin_visit, catalogs, tmp_path):
    g = catalogs["gaia_table"].copy()
    g.remove_column("ref_epoch")
    path = tmp_path / "no_epoch_column.ecsv"
    g.write(path)
    with pytest.raises(ValueError, match="no_epoch_column.ecsv: proper motions but no epoch"):
        read_reference_catalogs(str(path))
    a = read_reference_catalogs(str(path), epoch="J2016.0")
    b = read_reference_catalogs(str(path), epoch=2016.0)
    assert np.all(a["EPOCH"] == 2016.0) and np.all(b["EPOCH"] == 2016.0)
    moved = at_epoch(a, OBSERVED)
    sep = SkyCoord(moved["RA"], moved["DEC"], unit="deg").separation(
        SkyCoord(catalogs["truth"]["RA"], catalogs["truth"]["DEC"], unit="deg"))
    assert sep.to_value(u.mas).max() < 0.01


def test_sources_without_proper_motion_kept_with_grown_errors_or_dropped(catalogs, tmp_path):
    g = catalogs["gaia_table"].copy()
    g["pmra"][:10] = np.nan
    g["pmdec"][:10] = np.nan
    path = tmp_path / "two_parameter.ecsv"
    g.write(path)
    ref = read_reference_catalogs(str(path))
    kept = at_epoch(ref, OBSERVED, pm_missing="keep", pm_dispersion=5.0)
    years = OBSERVED.jyear - 2016.0
    assert len(kept) == len(g)
    # Their error: 0.3 mas of position plus 5 mas/yr over the epoch difference.
    assert kept["ERR"][:10] == pytest.approx(np.hypot(0.3, 5.0 * years), rel=1e-6)
    assert np.all(kept["ERR"][10:] < 2.0)
    dropped = at_epoch(ref, OBSERVED, pm_missing="drop")
    assert len(dropped) == len(g) - 10


def _noisy_hst(truth, seed, path):
    """Every source, with 12 mas rms per axis of extra scatter (an older, noisier catalog)."""
    noise = np.random.default_rng(seed).normal(0, 12e-3 / 3600, (len(truth), 2))
    Table({"RA": truth["RA"] + noise[:, 0] / np.cos(np.deg2rad(truth["DEC"])),
           "DEC": truth["DEC"] + noise[:, 1], "MAG": truth["MAG"]}).write(path, overwrite=True)
    return path


def test_hst_and_gaia_merged_without_duplicates_and_no_worse(builtin_visit, catalogs, tmp_path):
    """
    HST (every source, noisier) + Gaia-like (the brightest 5%, precise, moving): merged at
    the visit epoch with no cross-catalog pair within the tolerance, and aligning to the
    merged catalog is at least as good as to the better single one, on average over four
    draws of the HST noise (one draw proves nothing: single draws differ by ~0.5 mas).
    """
    from scipy.spatial import cKDTree

    v = builtin_visit["visit"]
    truth = catalogs["truth"]
    bright = np.argsort(truth["MAG"])[: int(0.05 * len(truth))]
    gaia_path = tmp_path / "gaia_bright.ecsv"
    catalogs["gaia_table"][bright].write(gaia_path)

    tol = 0.1
    hst_path = _noisy_hst(truth, 1, tmp_path / "hst_1.ecsv")
    merged = at_epoch(read_reference_catalogs(f"{gaia_path}, {hst_path}", merge_radius=tol),
                      OBSERVED)
    xyz = SkyCoord(merged["RA"], merged["DEC"], unit="deg").cartesian.xyz.value.T
    pairs = cKDTree(xyz).query_pairs(np.deg2rad(tol / 3600), output_type="ndarray")
    # No source of one catalog within the tolerance of a source of the other (pairs of
    # distinct galaxies closer than that within one catalog are real and stay).
    assert not np.any(merged["CATALOG"][pairs[:, 0]] != merged["CATALOG"][pairs[:, 1]])
    counts = {c["file"].split("/")[-1]: c["n_used"] for c in merged.meta["catalogs"]}
    # Gaia's precise positions replace HST's; HST adds the rest (less the few faint
    # galaxies that sit within the tolerance of a bright one: one source for matching).
    assert counts["gaia_bright.ecsv"] == len(bright)
    rest = len(truth) - len(bright)
    assert 0.99 * rest <= counts["hst_1.ecsv"] <= rest
    assert sum(counts.values()) == len(merged)

    scores = {"hst": [], "merged": []}
    for seed in (1, 2, 3, 4):
        hst_path = _noisy_hst(truth, seed, tmp_path / f"hst_{seed}.ecsv")
        for name, spec in (("hst", str(hst_path)), ("merged", f"{gaia_path}, {hst_path}")):
            out, _ = _align(v, spec)
            scores[name].append(accuracy(out, v)[0])
            if name == "merged":
                assert all(m.meta.cal_step.tweakreg == "COMPLETE" for m in out)
    gaia_alone = accuracy(_align(v, gaia_path)[0], v)[0]
    best = min(np.mean(scores["hst"]), gaia_alone)
    assert np.mean(scores["merged"]) <= best, (scores, gaia_alone)


def test_cuts_on_any_column_and_saved_catalog(builtin_visit, catalogs, tmp_path):
    v = builtin_visit["visit"]
    step = CeersTweakRegStep(abs_refcat=str(catalogs["gaia"]),
                             abs_cuts="phot_g_mean_mag < 25; pmra_error <= 0.5",
                             save_abs_catalog=True, output_dir=str(tmp_path))
    step.run(library_of(v))
    saved = Table.read(tmp_path / "jw01345001001_f200w_abs_refcat.ecsv")
    n_bright = int(np.sum(catalogs["gaia_table"]["phot_g_mean_mag"] < 25))
    assert 0 < len(saved) == n_bright
    assert saved.meta["epoch"] == pytest.approx(OBSERVED.jyear, abs=0.01)
    assert {"RA", "DEC", "ERR"} <= set(saved.colnames)
    results = Table.read(tmp_path / "jw01345001001_f200w_tweakreg_results.ecsv")
    assert results.meta["abs_refcat_catalogs"][0]["n_after_cuts"] == n_bright


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.rename_columns(["ra", "dec"], ["x", "y"]), "no RA/DEC columns"),
    (lambda t: t.replace_column("ref_epoch", np.full(len(t), "yesterday")),
     "cannot read epochs like 'yesterday'"),
    (lambda t: [t.__setitem__(c, t[c] / 3.6e6) for c in ("pmra", "pmdec")],
     "implausible for stars in mas/yr"),
    (lambda t: t.__setitem__("ref_epoch", np.full(len(t), 57388.0)), "expected Julian years"),
])
def test_bad_catalogs_named(catalogs, tmp_path, change, message):
    t = catalogs["gaia_table"].copy()
    change(t)
    path = tmp_path / "bad_gaia.ecsv"
    t.write(path)
    with pytest.raises(ValueError, match=f"bad_gaia.ecsv.*{message}"):
        read_reference_catalogs(str(path))


def test_empty_after_cuts_and_unknown_cut_column(catalogs):
    with pytest.raises(ValueError, match="gaia_like.ecsv: no reference source left with cuts"):
        read_reference_catalogs(str(catalogs["gaia"]), cuts="phot_g_mean_mag < 5")
    with pytest.raises(ValueError, match="abs_cuts: no column 'ruwe'"):
        read_reference_catalogs(str(catalogs["gaia"]), cuts="ruwe < 1.4")
    with pytest.raises(ValueError, match="abs_cuts: cannot read"):
        read_reference_catalogs(str(catalogs["gaia"]), cuts="ruwe about 1")


def test_proper_motion_units_converted(catalogs, tmp_path):
    t = catalogs["gaia_table"].copy()
    t["pmra"] = (t["pmra"] / 1e3) * u.arcsec / u.yr
    t["pmdec"] = (t["pmdec"] / 1e3) * u.arcsec / u.yr
    path = tmp_path / "arcsec_per_year.ecsv"
    t.write(path)
    ref = read_reference_catalogs(str(path))
    assert np.asarray(ref["PMRA"]) == pytest.approx(np.asarray(catalogs["gaia_table"]["pmra"]))


def test_several_catalogs_and_cuts_from_the_command_line(small_visit_dir, tmp_path):
    """configobj turns 'a,b' into a list on a command line: both parameters accept it."""
    from astropy.table import vstack
    from conftest import run_cli

    twice = tmp_path / "refcat_copy.ecsv"
    t = Table.read(small_visit_dir["refcat"])
    vstack([t, t]).write(twice)
    out = tmp_path / "out"
    proc = run_cli(["strun", "ceers_tweak", str(small_visit_dir["asn"]),
                    f"--abs_refcat={small_visit_dir['refcat']},{twice}",
                    "--abs_cuts=MAG < 40, MAG > 0", "--minobj=8", "--abs_minobj=8",
                    "--save_abs_catalog=true", f"--output_dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = Table.read(out / "jw01345001001_f200w_abs_refcat.ecsv")
    assert len(saved) == len(t)  # the second catalog repeats the first: merged, not doubled
    counts = [c["n_used"] for c in saved.meta["catalogs"]]
    assert counts == [len(t), 0]
    results = Table.read(out / "jw01345001001_f200w_tweakreg_results.ecsv")
    assert set(results["status"]) == {"COMPLETE"}


def test_unitless_proper_motions_in_arcsec_per_year_refused(catalogs, tmp_path):
    """A Gaia-like catalog with pmra/pmdec in arcsec/yr and no unit: refused, file and columns named.

    Read as mas/yr its stars would barely move between 2016 and 2022 (~240 mas off for the
    ~40 mas/yr of this field's stars); the same catalog in mas/yr or with a unit is read.
    """
    t = catalogs["gaia_table"].copy()
    t["pmra"], t["pmdec"] = t["pmra"] / 1e3, t["pmdec"] / 1e3
    path = tmp_path / "gaia_arcsec.csv"
    t.write(path)
    with pytest.raises(ValueError, match=r"gaia_arcsec.csv: proper motions pmra/pmdec \(no unit, "
                       r"read as mas/yr\) have a median \|pm\| of 0.0\d+ mas/yr .*arcsec/yr"):
        read_reference_catalogs(str(path))
    # in mas/yr without a unit (a CSV as Gaia's archive writes it): read as it is
    t["pmra"], t["pmdec"] = t["pmra"] * 1e3, t["pmdec"] * 1e3
    t.write(tmp_path / "gaia_mas.csv")
    ref = read_reference_catalogs(str(tmp_path / "gaia_mas.csv"))
    assert np.asarray(ref["PMRA"]) == pytest.approx(np.asarray(catalogs["gaia_table"]["pmra"]))
    # slow but real: few sources, all slower than 1 mas/yr, still pass as mas/yr
    slow = t[:2].copy()
    slow["pmra"], slow["pmdec"] = 0.01, 0.02
    slow.write(tmp_path / "two_slow.csv")
    assert len(read_reference_catalogs(str(tmp_path / "two_slow.csv"))) == 2


def test_absurd_proper_motions_drop_their_rows_not_the_catalog(builtin_visit, catalogs, tmp_path,
                                                               caplog):
    """1% of the rows at 1e7 mas/yr (corrupt entries): those rows are dropped with a warning."""
    t = catalogs["gaia_table"].copy()
    bad = np.arange(0, len(t), 100)[: max(1, len(t) // 100)]
    t["pmra"][bad] = 1e7
    path = tmp_path / "gaia_corrupt.ecsv"
    t.write(path)
    import logging

    with caplog.at_level(logging.WARNING, logger="ceers_steps"):
        ref = read_reference_catalogs(str(path))
    assert len(ref) == len(t) - len(bad)
    assert any("gaia_corrupt.ecsv" in r.getMessage() and "beyond 20000 mas/yr" in r.getMessage()
               and "dropped" in r.getMessage() for r in caplog.records)
    moved = at_epoch(ref, OBSERVED)
    assert len(moved) == len(t) - len(bad)
    # the catalog still aligns the visit as well as the clean one
    v = builtin_visit["visit"]
    aligned, _ = _align(v, path)
    assert accuracy(aligned, v)[0] < 5.0
