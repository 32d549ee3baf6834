"""Hostile inputs: every command ends clearly, never overwrites an input, never calls a wrong WCS aligned.

Each case runs a command (in this process, as a user would from the shell) on a
fresh copy of a small synthetic visit with known truth, after spoiling one thing.
`verify` then checks, for every case: the exit status, that the message names
the file or parameter, that every input is byte-identical after the run, that
no half-written output is left, and that no image marked COMPLETE is more than
10 mas (RMS over the image) from its true WCS.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.table import Table, vstack
from conftest import clean_env, file_digest, module_tmp, shift_wcs

from ceers_steps.cli.commands import align_main, apply_wcs_main, convert_cfg_main
from ceers_steps.io.wcs_models import exposure_base

VISIT, FILTER = "jw01345001001", "f200w"
LIMIT_MAS = 10.0


@pytest.fixture(scope="session")
def pristine(request, tmp_path_factory):
    """2 SW detectors x 2 dithers, 1024^2, with NIRCam artifacts; never modified."""
    from ceers_steps.synthetic import make_visit, write_visit

    visit = make_visit(detectors=("nrca1", "nrcb4"), n_dithers=2, shape=(1024, 1024),
                       noise=0.02, use_real=False, seed=11, artifacts=True)
    root = module_tmp(request, tmp_path_factory, "hostile")
    _, refcat, paths = write_visit(visit, root / "calibrated")
    truth = {exposure_base(im.model.meta.filename): im.true_wcs for im in visit.images}
    (root / "no_params").mkdir()
    return SimpleNamespace(cal=root / "calibrated", refcat=refcat, truth=truth,
                           names=[p.name for p in paths], no_params=root / "no_params")


class Work:
    """A fresh copy of the visit in tmp_path, the snapshot of its inputs and the checks."""

    def __init__(self, pristine, root):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.cal = root / "calibrated"
        shutil.copytree(pristine.cal, self.cal)
        self.refcat = self.cal / "refcat.ecsv"
        self.truth = pristine.truth
        self.names = pristine.names
        self.no_params = pristine.no_params
        self.digests = None

    def path(self, i):
        return self.cal / self.names[i]

    def snapshot(self, *extra):
        """Digest every input (after the case spoiled it): they must not change."""
        files = [p for p in self.root.rglob("*") if p.is_file()] + [Path(p) for p in extra]
        self.digests = {p: file_digest(p) for p in files}

    def align(self, *args, out="out"):
        argv = [VISIT, FILTER, "--input-dir", str(self.cal), "--output-dir", str(self.root / out),
                "--abs-refcat", str(self.refcat), "--save-results", "--n-jobs", "1",
                "--params-dir", str(self.no_params), *args]
        return align_main(argv)

    def verify(self, code, expect_code, err="", names=(), out=None):
        """The checks every case makes; returns the aligned images' statuses."""
        assert code == expect_code, err[-3000:]
        if expect_code:
            # Log lines may come first; the command ends with one line that says what went wrong.
            assert err.strip() and "Traceback" not in err, err[-3000:]
            last = err.strip().splitlines()[-1]
            for name in names:
                assert re.search(name, last), f"message does not name {name!r}: {last}"
        for path, digest in self.digests.items():
            assert path.exists() and file_digest(path) == digest, f"input changed: {path}"
        partial = [p for p in self.root.rglob("*") if ".part" in p.name]
        assert not partial, f"half-written outputs left: {partial}"
        return self.statuses(out or self.root / "out")

    def statuses(self, out):
        """Every aligned image in ``out`` opens; COMPLETE ones are within 10 mas of the truth."""
        from ceers_steps.core.compat import datamodels
        from ceers_steps.core.wcs_utils import sky_difference_mas

        found = {}
        for path in sorted(Path(out).glob("*_tweakreg.fits")) if Path(out).is_dir() else []:
            with datamodels.open(path) as m:
                status = m.meta.cal_step.tweakreg
                base = exposure_base(path.name)
                found[base] = status
                if status == "COMPLETE":
                    d = sky_difference_mas(m.meta.wcs, self.truth[base], m.data.shape, 8)
                    rms = float(np.sqrt(np.mean(d**2)))
                    assert rms < LIMIT_MAS, f"{path.name} COMPLETE but {rms:.1f} mas from truth"
        for path in Path(out).rglob("*.ecsv") if Path(out).is_dir() else []:
            Table.read(path, format="ascii.ecsv")
        return found


@pytest.fixture
def work(pristine, tmp_path):
    return Work(pristine, tmp_path)


def _results(work, out="out"):
    return Table.read(work.root / out / f"{VISIT}_{FILTER}_tweakreg_results.ecsv")


def _edit(path, func):
    from ceers_steps.core.compat import datamodels

    with datamodels.open(path) as m:
        func(m)
        m.save(path)


# --- 1. never silently wrong --------------------------------------------------------------


def test_image_10_arcmin_off_is_not_called_aligned(work, capsys):
    shift_wcs(work.path(1), 600.0)
    work.snapshot()
    code = work.align()
    st = work.verify(code, 1, capsys.readouterr().err)  # one image FAILED: exit status 1
    bad = exposure_base(work.names[1])
    assert st.pop(bad) == "FAILED"
    assert set(st.values()) == {"COMPLETE"}
    rows = _results(work)
    # Out before the fit: its catalog matches the reference nowhere within abs_searchrad.
    reasons = [r["status"] for r in rows if r["image"] == work.names[1]]
    assert reasons and all("matches the reference catalog at no offset" in r for r in reasons)


def test_frame_of_artifacts_fails_alone(work, capsys):
    """
    An image whose pixels do not belong to its WCS (here its frame rolled by 300 x 200
    pixels): its sources match the reference only by chance. It is left out before the
    fit, so its chance matches cannot pull the dither and detector terms it shares with
    the good images; those stay COMPLETE within 10 mas of the truth.
    """
    _edit(work.path(2), lambda m: setattr(m, "data", np.roll(m.data, (300, 200), axis=(0, 1))))
    work.snapshot()
    code = work.align()
    st = work.verify(code, 1, capsys.readouterr().err)
    assert st.pop(exposure_base(work.names[2])) == "FAILED"
    assert set(st.values()) == {"COMPLETE"}
    rows = _results(work)
    reasons = [r["status"] for r in rows if r["image"] == work.names[2]]
    assert reasons and all("matches the reference catalog at no offset" in r for r in reasons)


@pytest.mark.parametrize("abs_group", ["detector", "visit"])
def test_image_10_arcmin_off_other_modes(work, tmp_path, abs_group):
    from ceers_steps import CeersTweakRegStep

    shift_wcs(work.path(1), 600.0)
    work.snapshot()
    CeersTweakRegStep.call([str(work.path(i)) for i in range(4)], abs_refcat=str(work.refcat),
                           abs_group=abs_group, minobj=8, abs_minobj=8, n_jobs=1,
                           save_results=True, output_dir=str(work.root / "out"))
    st = work.verify(0, 0)
    assert st[exposure_base(work.names[1])] != "COMPLETE"


def test_all_nan_image_in_one_detector_association(work, capsys):
    for name in work.names:
        if "nrcb4" in name:
            (work.cal / name).unlink()
    nrca1 = [i for i, n in enumerate(work.names) if "nrca1" in n]
    _edit(work.path(nrca1[1]), lambda m: m.data.__setitem__(slice(None), np.nan))
    work.snapshot()
    code = work.align()
    st = work.verify(code, 1, capsys.readouterr().err)  # that image FAILED: exit status 1
    assert st[exposure_base(work.names[nrca1[1]])] != "COMPLETE"
    rows = _results(work)
    assert not any(r["fit_status"] == "SUCCESS" and r["nmatch"] == 0 for r in rows)


def test_empty_catalog_image_is_not_complete(work):
    from ceers_steps import CatalogStep, CeersTweakRegStep

    CatalogStep.call([str(work.path(i)) for i in range(4)], output_dir=str(work.root / "cats"),
                     n_jobs=1)
    cats = [work.root / "cats" / n.replace(".fits", "_cat.ecsv") for n in work.names]
    empty = Table.read(cats[0], format="ascii.ecsv")[:0]
    empty.write(cats[0], format="ascii.ecsv", overwrite=True)
    catfile = work.root / "catfile.txt"
    catfile.write_text("".join(f"{work.names[i]} {c}\n" for i, c in enumerate(cats)))
    work.snapshot()
    step = CeersTweakRegStep(abs_refcat=str(work.refcat), catfile=str(catfile), n_jobs=1,
                             save_results=True, output_dir=str(work.root / "out"))
    step.run([str(work.path(i)) for i in range(4)])
    st = work.verify(0, 0)
    assert st[exposure_base(cats[0].name)] == "FAILED"
    assert sum(v == "COMPLETE" for v in st.values()) == 3


@pytest.mark.parametrize("kind", ["all_nan", "off_image", "random_100k"])
def test_unusable_catalogs_are_reported_per_image(work, caplog, kind):
    from ceers_steps import CatalogStep, CeersTweakRegStep

    CatalogStep.call([str(work.path(i)) for i in range(4)], output_dir=str(work.root / "cats"),
                     n_jobs=1)
    cats = [work.root / "cats" / n.replace(".fits", "_cat.ecsv") for n in work.names]
    cat = Table.read(cats[0], format="ascii.ecsv")
    rng = np.random.default_rng(3)
    if kind == "all_nan":
        cat["xcentroid"] = np.nan
    elif kind == "off_image":
        cat["xcentroid"] += 5000.0
    else:
        n = 100_000
        cat = Table({"xcentroid": rng.uniform(0, 1023, n), "ycentroid": rng.uniform(0, 1023, n)})
    cat.write(cats[0], format="ascii.ecsv", overwrite=True)
    catfile = work.root / "catfile.txt"
    catfile.write_text("".join(f"{work.names[i]} {c}\n" for i, c in enumerate(cats)))
    work.snapshot()
    CeersTweakRegStep.call([str(work.path(i)) for i in range(4)], abs_refcat=str(work.refcat),
                           catfile=str(catfile), n_jobs=1, save_results=True,
                           output_dir=str(work.root / "out"))
    st = work.verify(0, 0)
    assert st[exposure_base(cats[0].name)] != "COMPLETE"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
              and work.names[0] in r.getMessage()]
    assert any(("lies on the image" in w or "denser" in w) for w in warned), warned


# --- 2. inputs never overwritten ---------------------------------------------------------


@pytest.fixture
def aligned(work):
    """The visit aligned once by ceers-align (WCS models in out/tweakreg_wcs)."""
    assert work.align() == 0
    return work


def test_apply_wcs_suffix_cal_into_input_folder_refused(aligned):
    from ceers_steps import ApplyWcsStep

    work = aligned
    work.snapshot()
    with pytest.raises(ValueError, match=f"{work.names[0]}.*overwrite the input"):
        ApplyWcsStep.call(str(work.path(0)), wcs_dir=str(work.root / "out" / "tweakreg_wcs"),
                          output_dir=str(work.cal), suffix="cal", save_results=True)
    work.verify(0, 0)


def test_ceers_apply_wcs_in_place_refused(aligned, capsys):
    work = aligned
    target = work.root / "out" / work.names[0].replace("_cal", "_tweakreg")
    work.snapshot()
    code = apply_wcs_main(["--image", str(target), "--output-dir", str(target.parent),
                           "--wcs-dir", str(work.root / "out" / "tweakreg_wcs")])
    work.verify(code, 1, capsys.readouterr().err, names=[target.name, "overwrite"])


def test_align_output_dir_equal_to_input_dir_keeps_inputs(work, capsys):
    work.snapshot()
    code = work.align(out="calibrated")
    work.verify(code, 0, out=work.cal)


def test_inputs_img_0_and_img_1_keep_two_outputs(work):
    """Non-JWST names lose only a known pipeline suffix: two inputs, two outputs, two models."""
    from ceers_steps import CeersTweakRegStep
    from ceers_steps.io.wcs_models import read_wcs_model_file

    a, b = work.root / "img_0.fits", work.root / "img_1.fits"
    shutil.copy(work.path(0), a)
    shutil.copy(work.path(2), b)
    work.snapshot()
    out = work.root / "out2"
    CeersTweakRegStep.call([str(a), str(b)], abs_refcat=str(work.refcat), n_jobs=1,
                           save_results=True, output_dir=str(out))
    assert sorted(p.name for p in out.glob("*.fits")) == ["img_0_tweakreg.fits",
                                                         "img_1_tweakreg.fits"]
    models = sorted((out / "tweakreg_wcs").glob("*.asdf"))
    assert [p.name for p in models] == ["img_0_tweakreg.asdf", "img_1_tweakreg.asdf"]
    assert [read_wcs_model_file(p).exposure for p in models] == ["img_0", "img_1"]
    work.verify(0, 0)


def test_two_inputs_one_output_name_refused(work):
    """Two names that do map to one output (img_cal, img_rate) are refused before writing."""
    from ceers_steps import CeersTweakRegStep

    a, b = work.root / "x" / "img_cal.fits", work.root / "img_rate.fits"
    a.parent.mkdir()
    shutil.copy(work.path(0), a)
    shutil.copy(work.path(2), b)
    work.snapshot()
    with pytest.raises(ValueError, match="img_cal.fits.*img_rate.fits|img_rate.fits.*img_cal.fits"):
        CeersTweakRegStep.call([str(a), str(b)], abs_refcat=str(work.refcat), n_jobs=1,
                               save_results=True, output_dir=str(work.root / "out2"))
    work.verify(0, 0, out=work.root / "out2")


def test_saved_abs_catalog_never_overwrites_the_refcat_it_came_from(work):
    """Re-running on the catalog a previous run saved, into the same folder, is refused."""
    from ceers_steps import CeersTweakRegStep

    out = work.root / "out"
    kwargs = dict(n_jobs=1, save_abs_catalog=True, output_dir=str(out), save_fit_results=False)
    CeersTweakRegStep.call([str(work.path(i)) for i in range(4)], abs_refcat=str(work.refcat),
                           **kwargs)
    saved = out / f"{VISIT}_{FILTER}_abs_refcat.ecsv"
    assert saved.exists()
    work.snapshot()
    with pytest.raises(ValueError, match=f"{saved.name}.*overwrite the input"):
        CeersTweakRegStep.call([str(work.path(i)) for i in range(4)], abs_refcat=str(saved),
                               **kwargs)
    work.verify(0, 0)


# --- 3. saved models carry the status; apply refuses what is not aligned --------------------


def test_skipped_image_model_is_not_applied_as_complete(work, capsys):
    shift_wcs(work.path(1), 600.0)
    assert work.align() == 1  # that image FAILED
    capsys.readouterr()
    work.snapshot()
    wcs_dir = work.root / "out" / "tweakreg_wcs"
    code = apply_wcs_main(["--all", "--input-dir", str(work.cal), "--output-dir",
                           str(work.root / "applied"), "--wcs-dir", str(wcs_dir)])
    work.verify(code, 1, capsys.readouterr().err, names=[exposure_base(work.names[1]), "FAILED"],
                out=work.root / "applied")
    code = apply_wcs_main(["--all", "--input-dir", str(work.cal), "--output-dir",
                           str(work.root / "applied"), "--wcs-dir", str(wcs_dir),
                           "--skip-missing"])
    st = work.verify(code, 0, out=work.root / "applied")
    assert st[exposure_base(work.names[1])] == "SKIPPED"
    assert sum(v == "COMPLETE" for v in st.values()) == 3


# --- 4. Dask: no hang -------------------------------------------------------------------------


@pytest.fixture
def fake_scheduler():
    """Ports that accept connections: one never answers, one answers like an HTTP server."""
    servers, stop = [], threading.Event()

    def serve(sock, reply):
        sock.settimeout(0.2)
        held = []
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            held.append(conn)
            if reply:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        for c in held:
            c.close()
        sock.close()

    ports = {}
    for kind, reply in (("silent", False), ("http", True)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        ports[kind] = s.getsockname()[1]
        t = threading.Thread(target=serve, args=(s, reply), daemon=True)
        t.start()
        servers.append(t)
    yield ports
    stop.set()
    for t in servers:
        t.join(5)


@pytest.mark.parametrize("kind", ["silent", "http"])
def test_scheduler_that_does_not_answer_fails_fast(work, fake_scheduler, kind):
    work.snapshot()
    address = f"tcp://127.0.0.1:{fake_scheduler[kind]}"
    exe = Path(sys.executable).parent / "ceers-align"
    start = time.perf_counter()
    # A child process with a deadline: a hang fails the test instead of stopping the suite.
    proc = subprocess.run([str(exe), VISIT, FILTER, "--input-dir", str(work.cal), "--output-dir",
                           str(work.root / "out"), "--abs-refcat", str(work.refcat),
                           "--params-dir", str(work.no_params), "--scheduler", address],
                          env={**clean_env(), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"},
                          capture_output=True, text=True, timeout=90)
    assert time.perf_counter() - start < 60
    work.verify(proc.returncode, 1, proc.stderr, names=[re.escape(address)])
    assert not (work.root / "out").exists()


# --- 5. paths a user can create ---------------------------------------------------------------


@pytest.mark.parametrize("folder", ["résultats ü", "with space"])
def test_output_folder_with_non_ascii_or_spaces(work, capsys, folder):
    work.snapshot()
    code = work.align(out=folder)
    st = work.verify(code, 0, out=work.root / folder)
    assert len(st) == 4 and set(st.values()) == {"COMPLETE"}
    assert len(list((work.root / folder / "tweakreg_wcs").glob("*.asdf"))) == 4


def test_input_folder_with_non_ascii_name(pristine, tmp_path, capsys):
    work = Work(pristine, tmp_path / "données")
    work.snapshot()
    st = work.verify(work.align(), 0)
    assert len(st) == 4 and set(st.values()) == {"COMPLETE"}


# --- 6. apply checks the exposure and the bounding box -----------------------------------------


def test_model_of_another_exposure_is_refused(aligned, capsys):
    work = aligned
    wcs_dir = work.root / "out" / "tweakreg_wcs"
    d1 = wcs_dir / f"{exposure_base(work.names[0])}_tweakreg.asdf"
    d2 = wcs_dir / f"{exposure_base(work.names[1])}_tweakreg.asdf"
    shutil.copy(d2, d1)  # the dither-2 model under the dither-1 name
    work.snapshot()
    argv = ["--image", str(work.path(0)), "--output-dir", str(work.root / "applied"),
            "--wcs-dir", str(wcs_dir)]
    code = apply_wcs_main(argv)
    work.verify(code, 1, capsys.readouterr().err,
                names=[work.names[0], exposure_base(work.names[1]), "force"],
                out=work.root / "applied")
    assert apply_wcs_main([*argv, "--force"]) == 0  # experts can


def test_model_with_small_bounding_box_is_refused(aligned, capsys):
    import asdf

    from ceers_steps.core.compat import open_asdf_in_memory

    work = aligned
    wcs_dir = work.root / "out" / "tweakreg_wcs"
    path = wcs_dir / f"{exposure_base(work.names[0])}_tweakreg.asdf"
    with open_asdf_in_memory(path) as af:
        tree = dict(af.tree)
    tree["wcs"].bounding_box = ((-0.5, 511.5), (-0.5, 511.5))
    asdf.AsdfFile(tree).write_to(path)
    work.snapshot()
    code = apply_wcs_main(["--image", str(work.path(0)), "--output-dir",
                           str(work.root / "applied"), "--wcs-dir", str(wcs_dir)])
    work.verify(code, 1, capsys.readouterr().err, names=[path.name, "does not cover"],
                out=work.root / "applied")


# --- 7. messages that name the file or parameter ---------------------------------------------


def test_image_without_wcsinfo_fails_alone(work, capsys):
    def drop(m):
        m.meta.wcsinfo.v2_ref = None
    _edit(work.path(3), drop)
    work.snapshot()
    code = work.align()
    st = work.verify(code, 1, capsys.readouterr().err, names=[work.names[3]])
    assert exposure_base(work.names[3]) not in st or st[exposure_base(work.names[3])] != "COMPLETE"
    rows = _results(work)
    assert any("v2_ref" in r["status"] for r in rows if r["image"] == work.names[3])


def test_sexagesimal_refcat_is_read(work, capsys):
    from astropy.coordinates import SkyCoord

    t = Table.read(work.refcat)
    c = SkyCoord(t["RA"], t["DEC"], unit="deg")
    sexa = work.root / "refcat_sexa.csv"
    Table({"RA": c.ra.to_string(unit="hourangle", sep=":", precision=5),
           "DEC": c.dec.to_string(sep=":", precision=4)}).write(sexa, format="ascii.csv")
    work.refcat = sexa
    work.snapshot()
    st = work.verify(work.align(), 0)
    assert set(st.values()) == {"COMPLETE"}


def test_unreadable_refcat_values_named(work, capsys):
    bad = work.root / "refcat_bad.csv"
    bad.write_text("RA,DEC\nfoo,bar\nbaz,qux\n")
    work.refcat = bad
    work.snapshot()
    code = work.align()
    work.verify(code, 1, capsys.readouterr().err, names=["refcat_bad.csv", "RA/DEC"])


@pytest.mark.parametrize(("param", "value", "rule"), [
    ("minobj", 0, "at least"),
    ("abs_minobj", 1, "at least 2"),
    ("tolerance", 0.0, "positive"),
    ("abs_tolerance", -1.0, "positive"),
    ("searchrad", -0.5, "positive"),
    ("separation", -0.1, ">= 0"),
    ("sip_npoints", 1, "at least 3"),
])
def test_bad_parameters_named_before_anything_is_written(work, param, value, rule):
    from ceers_steps import CeersTweakRegStep

    work.snapshot()
    with pytest.raises(ValueError, match=f"{param} must be {rule}"):
        CeersTweakRegStep.call([str(work.path(i)) for i in range(4)],
                               abs_refcat=str(work.refcat), abs_group="detector",
                               save_results=True, output_dir=str(work.root / "out"),
                               **{param: value})
    work.verify(0, 0)
    assert not any((work.root / "out").rglob("*")) if (work.root / "out").exists() else True


def test_bad_parameter_in_cfg_named_by_file_section_key(work, capsys):
    cfg = work.root / "f200w.cfg"
    cfg.write_text(f"[{VISIT}]\nminobj = 20\ntolerance = -0.1\n")
    work.snapshot()
    code = work.align("--params", str(cfg))
    work.verify(code, 1, capsys.readouterr().err, names=["f200w.cfg", VISIT, "tolerance"])


def _fsize_limit():
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))


def test_disk_full_names_the_file(work):
    """Files larger than 2 MB cannot be written (as on a full disk): one line naming the file."""
    work.snapshot()
    exe = Path(sys.executable).parent / "ceers-align"
    proc = subprocess.run([str(exe), VISIT, FILTER, "--input-dir", str(work.cal), "--output-dir",
                           str(work.root / "out"), "--abs-refcat", str(work.refcat),
                           "--save-results", "--n-jobs", "1", "--params-dir",
                           str(work.no_params)], env=clean_env(), capture_output=True, text=True,
                          preexec_fn=_fsize_limit, timeout=600)
    err = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert re.search(r"cannot write .*_tweakreg\.fits: .*(File too large|disk full)", err), err
    work.verify(0, 0)
    assert not list((work.root / "out").glob("*_tweakreg.fits"))


def test_output_folder_that_is_a_file(work, capsys):
    (work.root / "out").write_text("not a folder")
    work.snapshot()
    code = work.align()
    err = capsys.readouterr().err
    assert code == 1 and "out" in err and "Traceback" not in err
    work.verify(0, 0, out=work.root / "nothing")


def test_convert_cfg_output_folder_that_is_a_file(work, capsys):
    cfg = work.root / "f200w.cfg"
    cfg.write_text(f"[{VISIT}]\nminobj = 20\n")
    (work.root / "params").write_text("")
    work.snapshot()
    code = convert_cfg_main([str(cfg), "--output-dir", str(work.root / "params")])
    work.verify(code, 1, capsys.readouterr().err, names=["params"])


def test_demo_with_unknown_detector(tmp_path, capsys):
    from ceers_steps.cli.demo import main

    with pytest.raises(SystemExit) as exc:
        main(["--detectors", "nrcz9", "--output-dir", str(tmp_path / "demo")])
    assert exc.value.code == 2
    assert "nrcz9" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


# --- 8. quietly odd ------------------------------------------------------------------------


def test_refcat_with_every_row_twice(work, capsys):
    twice = work.root / "refcat_twice.ecsv"
    t = Table.read(work.refcat)
    vstack([t, t]).write(twice)
    work.refcat = twice
    work.snapshot()
    st = work.verify(work.align(), 0)
    assert set(st.values()) == {"COMPLETE"} and len(st) == 4


def test_duplicated_association_member_is_used_once(work, caplog):
    from ceers_steps import CeersTweakRegStep
    from ceers_steps.core.fileio import write_association

    names = [work.names[0], *work.names]
    asn = write_association(work.cal / "dup_asn.json", "dup", names)
    work.snapshot()
    step = CeersTweakRegStep(abs_refcat=str(work.refcat), n_jobs=1, save_results=True,
                             output_dir=str(work.root / "out"))
    step.run(str(asn))
    st = work.verify(0, 0)
    assert len(st) == 4 and set(st.values()) == {"COMPLETE"}
    assert sum(r["image"] == work.names[0] for r in step.results) == 2  # relative + absolute
    assert any("more than once" in r.getMessage() for r in caplog.records)


def test_n_jobs_never_starts_more_workers_than_images():
    from ceers_steps.core import engine

    with engine.worker_pool(64, n_tasks=4):
        assert engine._ACTIVE[2]._max_workers == 4


@pytest.mark.parametrize("section", ["../../x", "jw01345001001/../../y", "evil"])
def test_cfg_section_that_is_not_a_visit_id(work, capsys, section):
    cfg = work.root / "f200w.cfg"
    cfg.write_text(f"[{section}]\nminobj = 20\n")
    work.snapshot()
    code = convert_cfg_main([str(cfg), "--output-dir", str(work.root / "params")])
    work.verify(code, 1, capsys.readouterr().err, names=["f200w.cfg", re.escape(section)])
    out = work.root / "params"
    for folder in (out, work.root, work.root.parent, work.root.parent.parent):
        assert not list(folder.glob("*.asdf")), folder


_ORPHAN = """
import os, sys, time
from ceers_steps.core import engine

def work(_):
    time.sleep(120)

with engine.worker_pool(2, n_tasks=2):
    pool = engine._ACTIVE[2]
    futures = [pool.submit(work, i) for i in range(2)]
    time.sleep(1.5)
    print(" ".join(str(p) for p in pool._processes), flush=True)
    time.sleep(120)
"""


def test_workers_end_when_the_main_process_is_killed(tmp_path):
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env=clean_env())
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    deadline = time.time() + 10
    alive = pids
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [p for p in pids if _alive(p)]
    assert not alive, f"workers {alive} outlived their killed parent"


def _alive(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}").exists() \
        else "X"
    return state not in ("Z", "X")


# --- and the everyday hostile inputs ---------------------------------------------------------


def test_truncated_cal_file_fails_alone(work, capsys):
    data = work.path(2).read_bytes()
    work.path(2).write_bytes(data[: len(data) // 3])
    work.snapshot()
    st = work.verify(work.align(), 1, capsys.readouterr().err)
    assert exposure_base(work.names[2]) not in st
    assert sum(v == "COMPLETE" for v in st.values()) == 3


def test_missing_refcat_writes_nothing(work, capsys):
    work.refcat = work.root / "nope.ecsv"
    work.snapshot()
    code = work.align()
    work.verify(code, 1, capsys.readouterr().err, names=["nope.ecsv"])
    assert not (work.root / "out").exists()


def test_missing_input_folder(work, capsys):
    work.snapshot()
    code = align_main([VISIT, FILTER, "--input-dir", str(work.root / "nowhere")])
    work.verify(code, 1, capsys.readouterr().err, names=["nowhere"])


def test_bad_visit_id(work, capsys):
    work.snapshot()
    code = align_main(["jw0134", FILTER, "--input-dir", str(work.cal)])
    work.verify(code, 2, capsys.readouterr().err, names=["jw0134"])


def test_parameter_file_that_is_not_asdf(work, capsys):
    bad = work.root / "bad.asdf"
    bad.write_text("hello")
    work.snapshot()
    code = work.align("--params", str(bad))
    work.verify(code, 1, capsys.readouterr().err, names=["bad.asdf"])


def test_association_member_missing(work):
    from ceers_steps import CeersTweakRegStep
    from ceers_steps.core.fileio import write_association

    asn = write_association(work.cal / "gone_asn.json", "gone", [*work.names, "gone_cal.fits"])
    work.snapshot()
    with pytest.raises(FileNotFoundError, match="gone_cal.fits"):
        CeersTweakRegStep.call(str(asn), abs_refcat=str(work.refcat), n_jobs=1)
    work.verify(0, 0)


def test_catalog_named_in_catfile_missing_fails_alone(work):
    from ceers_steps import CeersTweakRegStep

    catfile = work.root / "catfile.txt"
    catfile.write_text(f"{work.names[0]} missing_cat.ecsv\n")
    work.snapshot()
    step = CeersTweakRegStep(abs_refcat=str(work.refcat), catfile=str(catfile), n_jobs=1,
                             save_results=True, output_dir=str(work.root / "out"))
    step.run([str(work.path(i)) for i in range(4)])
    st = work.verify(0, 0)
    assert st[exposure_base(work.names[0])] == "FAILED"
    assert sum(v == "COMPLETE" for v in st.values()) == 3


def test_input_that_is_not_an_image(work):
    from ceers_steps import CeersTweakRegStep
    from ceers_steps.core.logs import AllImagesFailedError

    work.snapshot()
    with pytest.raises(AllImagesFailedError, match="refcat.ecsv.*cannot be opened as a JWST"):
        CeersTweakRegStep.call(str(work.refcat), n_jobs=1, output_dir=str(work.root / "out"))
    work.verify(0, 0)


def _without_root_override():
    """
    Run the child without root's power to write anywhere: drop CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH and CAP_FOWNER from the bounding set, so the exec'd command
    obeys the folder's permission bits as any user would.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP


@pytest.mark.parametrize("command", ["ceers-align", "ceers-convert-cfg"])
def test_read_only_output_folder(work, command):
    out = work.root / "out"
    out.mkdir()
    cfg = work.root / "f200w.cfg"
    cfg.write_text(f"[{VISIT}]\nminobj = 20\n")
    out.chmod(0o555)
    work.snapshot()
    exe = str(Path(sys.executable).parent / command)
    args = ([exe, VISIT, FILTER, "--input-dir", str(work.cal), "--output-dir", str(out),
             "--abs-refcat", str(work.refcat), "--n-jobs", "1", "--params-dir",
             str(work.no_params)] if command == "ceers-align"
            else [exe, str(cfg), "--output-dir", str(out)])
    try:
        proc = subprocess.run(args, env=clean_env(), capture_output=True, text=True, timeout=600,
                              preexec_fn=_without_root_override, cwd=work.root)
    finally:
        out.chmod(0o755)
    if proc.returncode == 0 and os.geteuid() == 0:
        pytest.skip("cannot take root's write permission away on this machine")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Permission denied" in last and "out" in last, last
    work.verify(0, 0)
    assert not list(out.iterdir())
