"""The optional API key: with RERANKER_API_KEY or RERANKER_API_KEY_FILE set, every route but
/health, /ready and the docs needs `Authorization: Bearer <key>`, and gets 401 otherwise.

Keys are compared in constant time (hmac.compare_digest), every key each time. `RequireKey` guards the
FastAPI app (inside CORS, so that a browser can read its 401); the /rerank fast path takes only
requests whose key `ApiKeys.accepts`, and leaves the others to it.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.protocol import ErrorKind
from shared.settings import Settings

from . import errors
from .asgi import send_answer
from .errors import ServiceError

OPEN = ("/health", "/ready", "/docs", "/redoc", "/openapi.json")  # and what is under /docs/ (its files)


def is_open(path: str) -> bool:
    return path in OPEN or path.startswith("/docs/")


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        self.keys = [k.encode() for k in keys]

    @classmethod
    def from_settings(cls, settings: Settings) -> "ApiKeys | None":
        """The keys the settings name (the file is read now), or None where no key is set."""
        keys = [settings.api_key.get_secret_value()] if settings.api_key is not None else []
        if settings.api_key_file is not None:
            lines = Path(settings.api_key_file).read_text().splitlines()
            keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys and settings.api_key_file is not None:
            raise ValueError(f"RERANKER_API_KEY_FILE={settings.api_key_file} holds no key")
        return cls(keys) if keys else None

    def accepts(self, authorization: bytes | None) -> bool:
        """Whether an Authorization header's value is `Bearer <one of the keys>`."""
        if authorization is None:
            return False
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        return sum(hmac.compare_digest(token, key) for key in self.keys) > 0


class RequireKey:
    """401 for a request without a valid key, on every route but the open ones (and CORS preflights,
    which browsers send without credentials)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and not is_open(scope["path"]):
            authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            if not self.keys.accepts(authorization):
                refusal = ServiceError(ErrorKind.UNAUTHORIZED, "a valid API key is needed: send the header "
                                                               "Authorization: Bearer <key>")
                return await send_answer(send, errors.answer(refusal, errors.dialect_for(scope["path"])))
        await self.app(scope, receive, send)
