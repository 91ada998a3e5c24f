"""A DICOMweb client (``dicomweb-client``) with auth from environment variables and retries with back-off.

Auth is set on the ``requests`` session (``session.auth``), never in the header dict that dicomweb-client logs at
debug level, and never in the URL: a URL with ``user:password@`` is refused. Retries are urllib3's ``Retry`` on the
session's adapter: 429/5xx answers, connect errors and read timeouts, exponential back-off, GET only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from mcmfh.errors import MCMFHError
from mcmfh.pacs.qido import Paging

TOKEN_ENV = "MCMFH_PACS_TOKEN"
USER_ENV = "MCMFH_PACS_USER"
PASSWORD_ENV = "MCMFH_PACS_PASSWORD"
RETRY_STATUS = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class PacsConfig:
    """Where the PACS is and how to talk to it. Credentials are read from the environment at connect time."""

    url: str
    timeout_s: float = 30.0
    retries: int = 5
    backoff_s: float = 0.5  # waits backoff_s * 2**(n-1) before retry n
    workers: int = 4  # concurrent WADO-RS requests
    # QIDO-RS paging (mcmfh.pacs.qido): results asked per page, and the most pages one query may take. 2,000 pages of
    # 1,000 is 2 million instances in one listing; a larger PACS is synced in date ranges (--since/--until).
    page_size: int = 1000
    max_pages: int = 2000

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MCMFHError(f"--dicomweb {self.url!r}: expected an http(s) URL such as https://pacs.example/dicom-web")
        if parts.username or parts.password:
            raise MCMFHError(f"--dicomweb: put no credentials in the URL; use {TOKEN_ENV} or {USER_ENV}/{PASSWORD_ENV}")
        if self.workers < 1 or self.retries < 0 or self.timeout_s <= 0:
            raise MCMFHError("PACS options: workers >= 1, retries >= 0 and timeout > 0 expected")
        if self.page_size < 1 or self.max_pages < 1:
            raise MCMFHError("PACS options: --page-size >= 1 and --max-pages >= 1 expected")

    @property
    def public_url(self) -> str:
        """The URL without query string, safe to store and print."""
        p = urlsplit(self.url)
        return f"{p.scheme}://{p.netloc}{p.path}".rstrip("/")

    def paging(self) -> Paging:
        return Paging(self.public_url, self.page_size, self.max_pages)


def require_extra() -> None:
    """The libraries of the ``pacs`` extra, or one line saying how to install them."""
    try:
        import dicomweb_client  # noqa: F401
        import requests  # noqa: F401
    except ImportError as e:
        raise MCMFHError(f"`mcmfh index sync` needs the pacs extra ({e.name or 'dicomweb-client'} is not installed): "
                         "pip install 'mcmfh[pacs]'") from None  # fmt: skip


class BearerAuth:
    """``requests`` auth hook adding ``Authorization: Bearer``; its repr never shows the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(***)"


def auth_from_env(env: dict[str, str] | None = None):
    """Bearer token (MCMFH_PACS_TOKEN) or basic auth (MCMFH_PACS_USER + MCMFH_PACS_PASSWORD), or None."""
    from requests.auth import HTTPBasicAuth

    env = os.environ if env is None else env
    token, user, password = env.get(TOKEN_ENV), env.get(USER_ENV), env.get(PASSWORD_ENV)
    if token and user:
        raise MCMFHError(f"set either {TOKEN_ENV} or {USER_ENV}/{PASSWORD_ENV}, not both")
    if token:
        return BearerAuth(token)
    if user:
        if password is None:
            raise MCMFHError(f"{USER_ENV} is set but {PASSWORD_ENV} is not")
        return HTTPBasicAuth(user, password)
    return None


def connect(config: PacsConfig):
    """A ``dicomweb_client.DICOMwebClient`` for ``config``: auth on the session, retries on its adapter."""
    import requests
    from dicomweb_client import DICOMwebClient
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    session.auth = auth_from_env()
    retry = Retry(
        total=config.retries,
        connect=config.retries,
        read=config.retries,
        status=config.retries,
        backoff_factor=config.backoff_s,
        status_forcelist=RETRY_STATUS,
        allowed_methods=frozenset({"GET", "HEAD"}),
        raise_on_status=False,  # the last answer goes back to dicomweb-client, which raises for its status
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=max(4, config.workers))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    client = DICOMwebClient(config.url, session=session, timeout=config.timeout_s)
    client.set_http_retry_params(retry=False)  # retries are the adapter's; no second layer multiplying them
    return client
