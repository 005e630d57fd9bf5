"""bench/preprocess_diff.py: its table reports the differences it claims to (README "Pre-processing")."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np

from conftest import IMAGES, REPO_ROOT, SHARED, require
from nanoplus.runtime import preprocess as pre
from nanoplus.runtime.preprocess_reference import reference_warp


def test_table_has_a_row_per_photo_and_the_measured_differences():
    photos = sorted(require(IMAGES).glob("*.jpg"))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "preprocess_diff.py"), "--sizes", "96",
                           "--shared", str(SHARED)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:-1]
    assert [r[0].lstrip("| ").split()[0] for r in body] == [p.stem for p in photos]
    assert header[-3].endswith(f"OpenCV {cv2.__version__} fallback: max grey levels")
    for row, path in zip(body, photos):
        cells = [c.strip(" |") for c in row]
        if pre._native is not None:  # the compiled columns: 0 everywhere
            compiled = cells[2:-3]
            assert compiled and all(c in ("0", "0.000%") for c in compiled), row
        # the fallback's columns, recomputed here
        img = cv2.imread(str(path))
        matrix = pre.get_warp_matrix(img.shape[:2], (96, 96))
        grey = np.abs(pre.warp_image(img, matrix, (96, 96)).astype(int) - reference_warp(img, matrix[0, 0], matrix[1, 1], (96, 96)))
        assert int(cells[-3]) == grey.max()
        assert cells[-1] == f"{(grey > 0).mean():.3%}"
    assert f"OpenCV {cv2.__version__}" in proc.stdout.splitlines()[-1]


def test_missing_photos_are_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "preprocess_diff.py"), "--shared", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no photos" in proc.stderr and "--shared" in proc.stderr
