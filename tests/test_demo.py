"""The README's embedded example: ceers-demo runs the whole chain and aligns to truth."""

import re

from ceers_steps.demo import main


def test_demo_aligns_to_truth(tmp_path, capsys):
    assert main(["--output-dir", str(tmp_path / "demo"), "--detectors", "nrca1,nrcb3",
                 "--dithers", "3"]) == 0
    out = capsys.readouterr().out
    rows = {name: (float(a), float(b)) for name, a, b in
            re.findall(r"^\s+(as assigned \(injected error\)|after ceers_tweak|after apply_wcs)"
                       r"\s+([\d.]+)\s+([\d.]+)$", out, re.M)}
    assert rows["as assigned (injected error)"][0] > 300
    assert rows["after ceers_tweak"][0] < 5
    assert rows["after apply_wcs"] == rows["after ceers_tweak"]
    assert (tmp_path / "demo" / "aligned" / "tweakreg_results_all.jw01345001001_f200w.txt").exists()
