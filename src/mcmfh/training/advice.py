"""What ``mcmfh train`` tells a user whose archive is smaller than the MCMFH recipe was measured to lead on.

The threshold is measured, not guessed (16 bits, 3 seeds, 2026-12-07). Unsupervised
(benchmarks/results/robustness_16bit_issue29.md): on MedPix trained on about 60 pairs UCCH leads MCMFH image->text in
label mAP (0.300 against 0.284) and paired R@10 (0.282 against 0.228; text->image level); on about 150 pairs (MedPix)
and 130 pairs (``vqa_rad``) MCMFH is level or ahead in label mAP. Supervised
(benchmarks/results/robustness_16bit_supervised.md): on about 60 MedPix pairs the TriPAH head leads
``mcmfh-supervised`` in label mAP both ways (0.345 / 0.323 against 0.289 / 0.287) with healthy codes, though it
collapsed or fell near chance on other small sets (a ``vqa_rad`` seed, the stress panels); on ``vqa_rad`` (130 pairs)
``mcmfh-supervised`` leads every head. Nothing between 60 and 130 pairs was measured, so the line is drawn at 100.
"""

from __future__ import annotations

# Below this many training pairs a user is told to compare MCMFH with the baselines that led it there.
SMALL_ARCHIVE_PAIRS = 100
# Per method of the MCMFH family: the rivals measured ahead of it below SMALL_ARCHIVE_PAIRS, and what to compare.
UNSUPERVISED_RIVALS = (
    "UCCH measured ahead of MCMFH image->text (CCA-ITQ level in paired recall)",
    "mcmfh, ucch, cca-itq",
    "Small archives and collapse",
)
SUPERVISED_RIVALS = (
    "the TriPAH head measured ahead of mcmfh-supervised in label mAP (it collapsed on other small sets: read the code "
    "health)",
    "mcmfh-supervised, tripah-head, dcmht-head",
    "Supervised mode",
)
# Methods whose recipe these measurements are about.
MCMFH_FAMILY = ("mcmfh", "mcmfh-no-moe", "mcmfh-no-dv", "mcmfh-no-gateloss", "mcmfh-no-fusion")
RIVALS = {
    **{m: UNSUPERVISED_RIVALS for m in MCMFH_FAMILY},
    "mcmfh-supervised": SUPERVISED_RIVALS,
}


def training_size_note(method: str, n_train: int) -> str | None:
    """One line for ``mcmfh train`` when ``method`` was fitted on fewer pairs than it was measured to lead on."""
    if method not in RIVALS or n_train >= SMALL_ARCHIVE_PAIRS:
        return None
    rivals, compare, section = RIVALS[method]
    return (f"note: {n_train} training pairs: below {SMALL_ARCHIVE_PAIRS} pairs {rivals}; compare them with "
            f"`mcmfh experiment` (methods {compare}) before you index (docs/model.md, '{section}')")  # fmt: skip
