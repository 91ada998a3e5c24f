"""What ``--prune`` may remove, and the guard that stops it when the listing looks wrong.

Prune removes the items whose instances the PACS no longer lists, only inside the run's filters. A PACS that
answers partially (an outage behind a proxy that answers ``[]``, a permission change, a filter typo on the server)
looks exactly like a mass deletion, so one run refuses, before changing anything, to remove:

- anything at all when the listing (inside the filters) is empty, and
- more than ``max_share`` of the synced items inside the filters (default ``DEFAULT_MAX_SHARE``),

unless ``--force``. A refused prune exits 2 with the counts; nothing is added or removed in that run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mcmfh.errors import MCMFHError
from mcmfh.pacs.query import Filters, InstanceRef

# A quarter: more than any routine retention clean-up of one week, far less than what a failed listing removes.
DEFAULT_MAX_SHARE = 0.25


def gone_in_scope(known: Mapping[str, tuple[str, str, str, str]], listed: Sequence[InstanceRef],
                  filters: Filters) -> tuple[list[str], int]:  # fmt: skip
    """(SOPInstanceUIDs indexed inside the filters' scope that the PACS no longer lists, how many are indexed there)."""
    present = {r.sop_uid for r in listed}
    scope = [sop for sop, (_, modality, body, date) in known.items() if filters.matches(modality, body, date)]
    return [sop for sop in scope if sop not in present], len(scope)


def check_prune(n_gone: int, n_scope: int, n_listed: int, max_share: float, url: str) -> None:
    """Refuse a prune of ``n_gone`` of ``n_scope`` items after a listing of ``n_listed`` (see the module docstring)."""
    if not n_gone:
        return
    if n_listed == 0:
        raise MCMFHError(
            f"{url}: the PACS listed no instances in this run's scope, so --prune would remove all {n_gone} synced "
            "item(s) in it; an outage, a proxy or a permission change looks like this. Nothing was changed: run "
            "without --prune to check the listing, or add --force if the PACS really holds none of them any more"
        )
    share = n_gone / max(n_scope, 1)
    if share > max_share:
        raise MCMFHError(
            f"{url}: --prune would remove {n_gone} of {n_scope} synced item(s) in this run's scope ({share:.0%}, over "
            f"the limit of {max_share:.0%}); a PACS answering partially looks like this. Nothing was changed: check "
            "the listing (a run without --prune), then add --force to remove them, or raise --prune-max-share"
        )
