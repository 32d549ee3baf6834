"""DS9 region files of an aligned image: its matched, rejected and unmatched sources."""

from pathlib import Path

import numpy as np

from ..core.fileio import atomic_output

__all__ = ["write_regions"]

_FLAG_STYLE = {"matched": ("circle", "green"), "rejected": ("x point", "red"),
               "unmatched": ("circle", "cyan")}


def write_regions(directory, residuals):
    """
    One DS9 region file per image, ``<directory>/<image stem>.reg``, in image
    coordinates (1-based, as DS9 counts pixels): matched sources as green circles,
    rejected matches as red crosses, unmatched sources as cyan circles, each
    tagged with its residual after alignment (mas).

    Returns
    -------
    dict
        Image name -> path written.
    """
    directory = Path(directory)
    out = {}
    for r in residuals:
        if not len(r.x):
            continue
        lines = ["# Region file format: DS9 version 4.1",
                 f"# {r.name}: {int(r.used.sum())} matched, {int((r.flag == 'rejected').sum())} "
                 f"rejected, {int((r.flag == 'unmatched').sum())} unmatched (ceers-steps)",
                 'global font="helvetica 9 normal" width=1', "image"]
        for k in range(len(r.x)):
            shape, colour = _FLAG_STYLE[r.flag[k]]
            x, y = r.x[k] + 1.0, r.y[k] + 1.0
            tag = (f" text={{{np.hypot(*r.after[k]):.1f} mas}}" if r.flag[k] != "unmatched"
                   else "")
            if shape == "circle":
                lines.append(f"circle({x:.3f},{y:.3f},6) # color={colour} tag={{{r.flag[k]}}}{tag}")
            else:
                lines.append(f"point({x:.3f},{y:.3f}) # point=x color={colour} "
                             f"tag={{{r.flag[k]}}}{tag}")
        path = directory / f"{Path(str(r.name)).stem}.reg"
        with atomic_output(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        out[r.name] = path
    return out
