"""QIDO-RS answers, read defensively: paged with a bound and a progress check, each page checked to be what the
standard says (a JSON list of DICOM datasets), and every failure told as what it is.

Paging: each query asks ``limit=page_size`` results from ``offset`` 0, then from where the answers so far end,
until a page comes back empty (a server may send fewer results than asked per page, so a short page is not the
end). Two guards keep a server that misbehaves from holding the sync lock forever: a page whose results were all
sent before (a server that ignores ``offset`` answers the first page again) stops the query, and so does a query
with more than ``max_pages`` pages of results (at most ``max_pages + 1`` requests).

Failures: a PACS that cannot be reached, one that answers with an HTTP error, and one that answers 200 with
something that is not a QIDO answer (an HTML login page from a single-sign-on proxy, JSON cut off by a proxy, JSON
that is not a list of objects) are three different messages, so the operator looks in the right place.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mcmfh.errors import MCMFHError

AUTH_HINT = " (check MCMFH_PACS_TOKEN or MCMFH_PACS_USER/MCMFH_PACS_PASSWORD)"
ROOT_HINT = " (is --dicomweb the DICOMweb root, under which /studies answers? e.g. https://pacs.example/dicom-web)"


class PacsAnswerError(MCMFHError):
    """The PACS answered, but not with a usable QIDO-RS answer."""


@dataclass(frozen=True)
class Paging:
    """How QIDO-RS queries are paged; ``url`` (without credentials) names the PACS in messages."""

    url: str
    page_size: int = 1000
    max_pages: int = 2000

    def pages(self, search: Callable[..., Any], what: str, uid_tag: str, **query: Any) -> Iterator[list[dict]]:
        """The pages of one query (``search`` is a dicomweb-client ``search_for_*`` method), each checked; stops
        at the first empty page, and raises on a page with nothing new or past ``max_pages``."""
        seen: set[str] = set()
        offset = 0
        for number in itertools.count(1):
            page = checked_page(search(limit=self.page_size, offset=offset, get_remaining=False, **query), what,
                                self.url)  # fmt: skip
            if not page:
                return
            if number > self.max_pages:
                break
            uids = {dataset_value(d, uid_tag) for d in page}
            if uids <= seen:
                raise PacsAnswerError(
                    f"{self.url}: the PACS answered but QIDO-RS {what} page {number} (offset {offset}) holds only "
                    "results it sent before: it does not honour 'offset', so paging would never end. Fix the "
                    "server or the proxy in front of it, or narrow the listing (--since/--until) so it fits one page "
                    f"(page size {self.page_size})"
                )
            seen |= uids
            offset += len(page)
            yield page
        raise PacsAnswerError(
            f"{self.url}: QIDO-RS {what} did not end after {self.max_pages} pages of {self.page_size} (offset "
            f"{offset}): narrow the listing (--since/--until) or raise --max-pages"
        )


def dataset_value(dataset: dict, tag: str, default: str = "") -> str:
    """The first value of ``tag`` in a DICOM JSON dataset, as text."""
    values = dataset.get(tag, {}).get("Value") or []
    return str(values[0]) if values else default


def checked_page(answer: Any, what: str, url: str) -> list[dict]:
    """``answer`` if it is a list of DICOM JSON datasets (objects whose values are objects), else a clear error."""
    if not isinstance(answer, list):
        raise PacsAnswerError(f"{url}: the PACS answered QIDO-RS {what} with JSON that is not a list of datasets "
                              f"(a JSON {_json_kind(answer)}); check --dicomweb and any proxy in front of the "
                              "PACS")  # fmt: skip
    for n, row in enumerate(answer):
        if not isinstance(row, dict) or not all(isinstance(v, dict) for v in row.values()):
            raise PacsAnswerError(f"{url}: the PACS answered QIDO-RS {what} with a list whose item {n} is not a DICOM "
                                  f"dataset (a JSON {_json_kind(row)}); check --dicomweb and any proxy in front of "
                                  "the PACS")  # fmt: skip
    return answer


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object whose values are not all objects" if value else "empty object"
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


def listing_error(e: Exception, url: str) -> MCMFHError | None:
    """The one-line error for an exception raised while listing, or None when it is not a request failure."""
    import requests

    if isinstance(e, requests.HTTPError):
        status = e.response.status_code if e.response is not None else "?"
        hint = AUTH_HINT if status in (401, 403) else ROOT_HINT if status == 404 else ""
        return MCMFHError(f"{url}: QIDO-RS answered HTTP {status}{hint}")
    if isinstance(e, requests.exceptions.JSONDecodeError):  # before RequestException: it is one
        doc = (e.doc or "").lstrip()
        if doc[:1] == "<":
            return PacsAnswerError(f"{url}: the PACS answered but with an HTML page, not QIDO-RS JSON (a login page "
                                   "of a single-sign-on proxy in front of it?): point --dicomweb at the DICOMweb root "
                                   "the account reaches directly")  # fmt: skip
        return PacsAnswerError(f"{url}: the PACS answered but its QIDO-RS JSON is cut off or malformed (at character "
                               f"{e.pos} of {len(e.doc or '')}): a proxy or the server broke the answer; retry, and "
                               "check their logs")  # fmt: skip
    if isinstance(e, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError):
        return PacsAnswerError(f"{url}: the PACS answered but its QIDO-RS answer broke off mid-transfer "
                               f"({type(e).__name__}); retry, and check the server's and any proxy's logs")  # fmt: skip
    if isinstance(e, requests.RequestException):
        return MCMFHError(f"{url}: cannot reach the PACS ({type(e).__name__})")
    return None
