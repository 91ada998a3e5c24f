"""The training-size note of ``mcmfh train``: only for the MCMFH family, only below the measured threshold."""

from mcmfh.training.advice import SMALL_ARCHIVE_PAIRS, training_size_note


def test_small_archive_note_names_the_baselines_that_led() -> None:
    note = training_size_note("mcmfh", SMALL_ARCHIVE_PAIRS - 1)
    assert note is not None and note.startswith(f"note: {SMALL_ARCHIVE_PAIRS - 1} training pairs")
    assert "UCCH" in note and "CCA-ITQ" in note and "mcmfh experiment" in note


def test_the_supervised_mode_is_told_of_the_supervised_heads() -> None:
    note = training_size_note("mcmfh-supervised", 60)
    assert note is not None and note.startswith("note: 60 training pairs")
    assert "TriPAH head" in note and "tripah-head, dcmht-head" in note and "code health" in note
    assert "UCCH" not in note and "'Supervised mode'" in note  # its own rivals and section, not the unsupervised ones
    assert training_size_note("mcmfh-supervised", SMALL_ARCHIVE_PAIRS) is None


def test_no_note_at_the_threshold_or_for_other_methods() -> None:
    assert training_size_note("mcmfh", SMALL_ARCHIVE_PAIRS) is None
    assert training_size_note("mcmfh-no-moe", 10) is not None
    assert training_size_note("cca-itq", 10) is None  # the advice is about MCMFH's recipe only
    assert training_size_note("dcmht-head", 10) is None
