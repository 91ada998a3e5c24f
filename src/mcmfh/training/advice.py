"""What ``mcmfh train`` tells a user whose archive is smaller than the MCMFH recipe was measured to lead on.

The threshold is measured, not guessed (benchmarks/results/robustness_16bit_issue29.md, 16 bits, 3 seeds, 2026-12-07):
on MedPix trained on about 60 pairs UCCH leads MCMFH image->text in label mAP (0.300 against 0.284) and paired R@10
(0.282 against 0.228; text->image level); on about 150 pairs (MedPix) and 130 pairs (``vqa_rad``) MCMFH is level or
ahead in label mAP. Nothing between 60 and 130 pairs was measured, so the line is drawn at 100.
"""

from __future__ import annotations

# Below this many training pairs a user is told to compare MCMFH with the baselines that led it there.
SMALL_ARCHIVE_PAIRS = 100
# Methods whose recipe these measurements are about.
MCMFH_FAMILY = ("mcmfh", "mcmfh-no-moe", "mcmfh-no-dv", "mcmfh-no-gateloss", "mcmfh-no-fusion")


def training_size_note(method: str, n_train: int) -> str | None:
    """One line for ``mcmfh train`` when ``method`` was fitted on fewer pairs than it was measured to lead on."""
    if method not in MCMFH_FAMILY or n_train >= SMALL_ARCHIVE_PAIRS:
        return None
    return (f"note: {n_train} training pairs: below {SMALL_ARCHIVE_PAIRS} pairs UCCH measured ahead of MCMFH "
            f"image->text (CCA-ITQ level in paired recall); compare them with `mcmfh experiment` (methods mcmfh, ucch, "
            f"cca-itq) before you index (docs/model.md, 'Small archives and collapse')")  # fmt: skip
