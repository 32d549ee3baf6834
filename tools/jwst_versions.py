#!/usr/bin/env python3
"""
Run the test suite on listed jwst versions and print the version table.

Each version gets its own virtual environment (``<envs-dir>/jwst-<version>``), made with
this Python: ``pip install -e ".[test]"`` of this checkout plus that jwst and the pins that
let it install and run on current Python (`PINS`). Then the README's test command
(``python -m pytest``) runs in it, and one table row is printed per version: pins, tests
passed / failed / skipped, wall time.

    python tools/jwst_versions.py                      # every listed version
    python tools/jwst_versions.py 1.7.2 1.12.5         # some of them
    python tools/jwst_versions.py 1.7.2 --reuse        # keep an existing environment
    python tools/jwst_versions.py 1.7.2 -- -k apply    # arguments after -- go to pytest
    python tools/jwst_versions.py 1.7.2 1.12.5 --jobs 2  # two versions at once (CI)

Exit status 1 when a version fails to install or has a failing test. Only the standard
library is used: the script runs before anything is installed.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: jwst version -> the pins that make it install and pass on current Python (3.10-3.12).
#: Old jwst releases declare open upper bounds that later releases of their dependencies
#: broke; ``pytest<8`` because asdf < 3's pytest plugin uses a hook argument pytest 8 removed.
PINS = {
    "1.7.2": ["numpy==1.23.5", "scipy==1.9.3", "astropy<5.3", "asdf<2.15", "stpipe<0.5",
              "gwcs<0.19", "drizzle<1.14", "stcal<1.3", "pytest<8"],
    "1.8.5": ["numpy==1.23.5", "scipy==1.9.3", "astropy<5.3", "asdf<2.15", "stpipe<0.5",
              "gwcs<0.19", "drizzle<1.14", "pytest<8"],
    "1.10.2": ["numpy==1.25.2", "scipy==1.9.3", "astropy<6", "asdf<3", "gwcs<0.20", "pytest<8"],
    # astropy < 6.1: gwcs 0.19 calls astropy's isiterable, whose deprecation warning would be
    # logged at every WCS evaluation.
    "1.12.5": ["numpy<2", "astropy<6.1", "pytest<8"],
    # astropy < 6.1 for the same reason as 1.12.5 (gwcs 0.21), and astropy 7 renames units
    # formats gwcs 0.21 still uses: each WCS evaluation logged deprecation warnings.
    "1.14.1": ["numpy<2", "astropy<6.1"],
    # astropy < 6.1 as for 1.14.1 (gwcs 0.22); drizzle < 2 as for 1.16.1 (resample calls
    # drizzle 1.x's tdriz, 3 return values).
    "1.15.1": ["numpy<2", "astropy<6.1", "drizzle<2"],
    # jwst 1.16's resample calls drizzle 1.x's tdriz (3 return values); pip would pick drizzle 3.
    "1.16.1": ["drizzle<2"],
    "3.0.0": [],
}


def _parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("versions", nargs="*", help=f"jwst versions (default: all of {', '.join(PINS)})")
    p.add_argument("--envs-dir", default=str(ROOT / ".venvs"),
                   help="where the environments are made (default: .venvs/ in this checkout)")
    p.add_argument("--reuse", action="store_true",
                   help="keep an environment that already has this jwst (default: make it afresh)")
    p.add_argument("--json", help="also write the table rows to this JSON file")
    p.add_argument("--jobs", type=int, default=1,
                   help="versions installed and tested at once (default 1); each suite is mostly "
                        "one process, so 2 on a 2-core machine nearly halves the wall time")
    return p


def _run(cmd, log, **kwargs):
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n")
        out.flush()
        return subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT,
                              cwd=ROOT, check=False, **kwargs).returncode


def _installed_jwst(python):
    res = subprocess.run([str(python), "-c", "import jwst; print(jwst.__version__)"],
                         capture_output=True, text=True, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def _counts(junit):
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failures, errors, skipped = (int(suite.get(k, 0)) for k in
                                        ("tests", "failures", "errors", "skipped"))
    return {"passed": total - failures - errors - skipped, "failed": failures + errors,
            "skipped": skipped}


def run_version(version, envs_dir, reuse, pytest_args):
    """Install jwst ``version`` in its environment and run the suite: one table row (dict)."""
    env = Path(envs_dir) / f"jwst-{version}"
    python = env / "bin" / "python"
    log = Path(envs_dir) / f"jwst-{version}.log"
    log.write_text("", encoding="utf-8")
    row = {"jwst": version, "pins": PINS[version], "log": str(log)}
    start = time.perf_counter()
    if not (reuse and python.exists() and _installed_jwst(python) == version):
        if _run([sys.executable, "-m", "venv", "--clear", env], log) != 0:
            return {**row, "result": "venv failed"}
        pip = [python, "-m", "pip", "install", "-q", "-e", ".[test]", f"jwst=={version}",
               *PINS[version]]
        if _run(pip, log) != 0:
            return {**row, "result": "install failed", "install_s": time.perf_counter() - start}
    row["install_s"] = time.perf_counter() - start
    junit = Path(envs_dir) / f"jwst-{version}.xml"
    # Each version's own temporary and artifact folders: suites may run at the same time.
    basetemp = Path(envs_dir).resolve() / f"jwst-{version}-tmp"
    env_vars = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
                "CEERS_TEST_ARTIFACTS": str(Path(envs_dir).resolve() / f"jwst-{version}-artifacts")}
    start = time.perf_counter()
    status = _run([python, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={junit}",
                   f"--basetemp={basetemp}", *pytest_args], log, env=env_vars)
    row["test_s"] = time.perf_counter() - start
    if not junit.exists():
        return {**row, "result": f"pytest exited {status} without results"}
    row.update(_counts(junit))
    row["result"] = "pass" if status == 0 and row["failed"] == 0 else "FAIL"
    return row


def table(rows):
    """The README's table (Markdown)."""
    lines = ["| jwst | pins on Python 3.11 | tests | time |", "|---|---|---|---|"]
    for r in rows:
        pins = ", ".join(f"`{p}`" for p in r["pins"]) or "none"
        if "passed" in r:
            tests = f"{r['result']}: {r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped"
            took = f"{r['test_s'] / 60:.1f} min (+{r['install_s'] / 60:.1f} install)"
        else:
            tests, took = r["result"], "-"
        lines.append(f"| {r['jwst']} | {pins} | {tests} | {took} |")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1:]
    args = _parser().parse_args(argv)
    versions = args.versions or list(PINS)
    unknown = [v for v in versions if v not in PINS]
    if unknown:
        print(f"jwst_versions: no pins listed for jwst {', '.join(unknown)} "
              f"(listed: {', '.join(PINS)})", file=sys.stderr)
        return 2
    Path(args.envs_dir).mkdir(parents=True, exist_ok=True)
    from concurrent.futures import ThreadPoolExecutor

    def one(version):
        print(f"== jwst {version}", flush=True)
        row = run_version(version, args.envs_dir, args.reuse, pytest_args)
        lines = [f"{table([row]).splitlines()[-1]} (log: {row['log']})"]
        if row["result"] != "pass":
            # CI shows only this output: the end of the log says what failed.
            tail = Path(row["log"]).read_text(encoding="utf-8", errors="replace").splitlines()
            lines += tail[-80:]
        print("\n".join(lines), flush=True)
        return row

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        rows = list(pool.map(one, versions))
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0 if all(r["result"] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
