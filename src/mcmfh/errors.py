"""One exception family, so the CLI and the service can turn any expected failure into one readable line."""


class MCMFHError(Exception):
    """An expected failure caused by input, configuration or artefacts; its message is shown to users as is."""


class DataError(MCMFHError):
    """Bad dataset input: names the file (and row or field) and what was expected."""


class ArtefactError(MCMFHError):
    """A cache, checkpoint or index that is missing, half-written, corrupt, or made by something incompatible."""
