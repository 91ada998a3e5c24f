"""The training-size note of ``mcmfh train``: only for the MCMFH family, only below the measured threshold."""

from mcmfh.training.advice import SMALL_ARCHIVE_PAIRS, training_size_note


def test_small_archive_note_names_the_baselines_that_led() -> None:
    note = training_size_note("mcmfh", SMALL_ARCHIVE_PAIRS - 1)
    assert note is not None and note.startswith(f"note: {SMALL_ARCHIVE_PAIRS - 1} training pairs")
    assert "UCCH" in note and "CCA-ITQ" in note and "mcmfh experiment" in note


def test_no_note_at_the_threshold_or_for_other_methods() -> None:
    assert training_size_note("mcmfh", SMALL_ARCHIVE_PAIRS) is None
    assert training_size_note("mcmfh-no-moe", 10) is not None
    assert training_size_note("cca-itq", 10) is None  # the advice is about MCMFH's recipe only
