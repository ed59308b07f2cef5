"""Loading a multi-frame series against the same series as single-frame files.

    .venv/bin/python bench/multiframe.py [--slices 200] [--runs 3]

One random 512 x 512 CT volume of ``--slices`` slices, stored three ways in a
temporary folder and twice encoded: single-frame CT files (the peer, measured in
the same run) and one Enhanced CT instance, each uncompressed and re-encoded as
JPEG-LS lossless by dcmtk's ``dcmcjpls``. For each: the time to read the files
(Pixel Data deferred, as the worker reads them) and build the volume, best of
``--runs``, and the peak of memory traced while building it beyond the volume
itself, in frames' worth (one frame = Rows x Columns x 2 bytes). Ratios are
against the single-frame series in the same transfer syntax; every volume must
equal the uncompressed single-frame one voxel for voxel.
The load average is printed with the numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.runner import read_series  # noqa: E402
from pipelines.volume import load_ct_volume  # noqa: E402
from tests.support.compressed import SYNTAXES, convert  # noqa: E402
from tests.support.ct_series import write_ct_series  # noqa: E402
from tests.support.enhanced import enhanced, write  # noqa: E402


def measure(paths: list[Path], runs: int) -> tuple[float, int, np.ndarray]:
    """Best seconds to read and load, peak traced bytes beyond the volume, voxels."""
    best, extra, voxels = float("inf"), 0, np.empty(0)
    for _ in range(runs):
        start = time.perf_counter()
        volume = load_ct_volume(read_series(paths))
        best = min(best, time.perf_counter() - start)
        voxels = volume.voxels
    tracemalloc.start()
    volume = load_ct_volume(read_series(paths))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    extra = peak - volume.voxels.nbytes
    return best, extra, voxels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, (args.slices, 512, 512)).astype(np.int16)
    jpeg_ls = next(s for s in SYNTAXES if s.name == "jpeg-ls-lossless")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        series = write_ct_series(folder / "classic", hu)
        [native] = write(enhanced(read_series(series.paths)), folder / "enhanced")
        compressed = convert(jpeg_ls, native, folder / "jpeg-ls" / "enhanced.dcm")
        classic_ls = [convert(jpeg_ls, p, folder / "jpeg-ls" / p.name) for p in series.paths]
        del hu
        frame = 512 * 512 * 2
        cases = {  # (syntax, layout): files
            ("explicit LE", "single-frame files"): series.paths,
            ("explicit LE", "one Enhanced CT"): [native],
            ("JPEG-LS lossless", "single-frame files"): classic_ls,
            ("JPEG-LS lossless", "one Enhanced CT"): [compressed],
        }
        results = {case: measure(paths, args.runs) for case, paths in cases.items()}
    reference = results[("explicit LE", "single-frame files")][2]
    print(f"{args.slices} slices of 512 x 512, best of {args.runs}")
    for (syntax, layout), (seconds, extra, voxels) in results.items():
        assert np.array_equal(voxels, reference), (syntax, layout)
        peer = results[(syntax, "single-frame files")][0]
        print(f"{syntax:17s} {layout:19s} {seconds:6.2f} s  x{seconds / peer:4.2f}  "
              f"peak beyond the volume {extra / frame:5.1f} frames")  # fmt: skip
    print("load average:", " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
