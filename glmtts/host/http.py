"""HTTP to the service (the watchdog's probe and smoke test, `glmtts batch run`): one
request, a timeout, and the whole answer (status, headers, body). A failure to get an
answer is HttpError (connection refused, timeout), never a status."""

import json as jsonlib
from dataclasses import dataclass, field

import requests

from .seam import changes

READ_METHODS = ("GET", "HEAD", "OPTIONS")


class HttpError(OSError):
    """No answer: the text says why (connection refused, read timed out, ...)."""


@dataclass
class Response:
    status: int
    headers: dict = field(default_factory=dict)
    body: bytes = b""

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        """The body as JSON; ValueError when it is not."""
        return jsonlib.loads(self.body)


class Http:
    _http = None  # a requests.Session-like transport; None = a plain one, made lazily

    @changes("http")
    def request(self, method, url, *, timeout, headers=None, params=None, json=None, data=None, files=None):
        """One request (``files``: multipart {"name": (filename, bytes, type)}); a
        Response, or HttpError when no answer came."""
        if self._http is None:
            self._http = requests.Session()
        try:
            r = self._http.request(method, url, timeout=timeout, headers=headers, params=params, json=json,
                                   data=data, files=files)
        except requests.RequestException as e:
            raise HttpError(str(e)) from None
        return Response(r.status_code, dict(r.headers), r.content)
