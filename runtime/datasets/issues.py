"""What a dataset loader fixed or noticed: the issue kinds, their texts, and the counter.

Every loader counts problems here instead of logging each one; ``load_dataset`` logs the counts in
one line per dataset. ``strict=True`` turns every fix (a change to the user's data) into an error.
"""
from __future__ import annotations

import numpy as np

from nanoplus.errors import NanoplusError


class DatasetError(NanoplusError, ValueError):
    """Data that cannot be read as given; the message names the file, the line or key, and the fix."""


# issue kind -> text after the count; FIXES are changes to the user's data (errors when strict),
# the others are notes about data accepted as it is.
ISSUE_TEXT = {
    "missing_image": "image files missing, images skipped",
    "unreadable_image": "image files unreadable, images skipped",
    "clipped": "boxes outside the image clipped",
    "outside": "boxes (almost) entirely outside the image dropped",
    "degenerate": "zero-area boxes dropped",
    "nonfinite": "NaN/inf boxes dropped",
    "duplicate": "duplicate label rows dropped",
    "renumbered_ids": "annotation ids missing, < 1 or repeated, renumbered for pycocotools",
    "tiny": "boxes under 1 px left out of training, as upstream",
    "zero_area_field": "annotations with 'area' <= 0 left out of training as upstream does, although "
                       "their boxes are real (check the json's 'area' values)",
    "crowd": "crowd/difficult boxes ignored in training, kept as ignore regions for evaluation",
    "empty": "images without boxes kept as negatives",
    "no_label_file": "images without a label file kept as negatives",
    "float_coords": "VOC boxes with float coordinates accepted",
    "segments": "polygon labels converted to boxes",
    "size_from_file": "image sizes read from the image files",
    "size_mismatch": "image sizes in the annotations differ from the image files, the files' sizes used",
}
FIXES = {"missing_image", "unreadable_image", "clipped", "outside", "degenerate", "nonfinite",
         "duplicate", "renumbered_ids", "size_mismatch"}
# notes about data that is fine as it is: logged at INFO level; everything else at WARNING
NOTES = {"tiny", "crowd", "empty", "no_label_file", "float_coords", "segments", "size_from_file"}


class Issues:
    """Counts problems instead of logging each one; raises at once in strict mode."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.counts: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def add(self, kind: str, where: str, count: int = 1) -> None:
        if count <= 0:
            return
        if self.strict and kind in FIXES:
            raise DatasetError(f"{where}: {ISSUE_TEXT[kind].split(',')[0]} (strict mode refuses data "
                               "that needs fixing; correct the file or load without strict)")
        self.counts[kind] = self.counts.get(kind, 0) + count
        self.examples.setdefault(kind, where)

    def add_where(self, kind: str, mask: np.ndarray, describe) -> None:
        """Count every True of ``mask``; ``describe(index)`` names the first one."""
        hits = np.flatnonzero(mask)
        if len(hits):
            self.add(kind, describe(int(hits[0])), len(hits))
