"""A small Confluent Schema Registry client: schemas by id (cached), subject lookup and registration.

Speaks the Confluent REST API (also served by Apicurio's ccompat endpoint) over ``urllib``: no new dependency.
Faults are split by who must act: an unknown id (404) is ``SchemaNotFound`` (the record is bad: dead-letter),
and so is an answer that cannot be a schema (larger than ``MAX_ANSWER_BYTES``, nested too deeply to parse, not
a JSON object): asking again would get the same answer. Unreachable, timeouts, 5xx and 429 are retried with
bounded exponential backoff while the caller waits, then ``RegistryUnavailable`` (infrastructure: retry the
batch or stop, never dead-letter); a TLS failure is not retried. Two kinds of it say more: ``NotARegistry``
(``subjects`` got a 404, or an answer no Confluent-compatible registry gives) and ``RegistryDenied``
(401/403). A refused registration (409/422) is ``SchemaRefused``, a ``ConfigError`` (the output schema does
not fit the subject). Messages say what failed in words, never with credentials. Thread-safe; calls block.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.avro.schema import AvroSchema, SchemaParseError
from worker.errors import ConfigError, RegistryUnavailable

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
MAX_MISSING = 10_000  # unknown ids remembered at once
MAX_ANSWER_BYTES = 8 * 1024 * 1024  # a registry answer is read no further: a schema is far smaller
_MAX_DETAIL_BYTES = 64 * 1024  # of an error answer, for its message
# Retried: the network, and an answer that is not JSON at all (a proxy's error page, a cut-off body).
_TRANSIENT = (urllib.error.URLError, OSError, http.client.HTTPException, ValueError)


class RegistryConfig(BaseModel):
    """Where the registry is and how hard to try; credentials never appear in errors or logs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    basic_auth_user_info: str | None = Field(default=None, repr=False, description="'user:password'")
    bearer_token: str | None = Field(default=None, repr=False)
    timeout_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    # The whole call, attempts and backoff together, ends within this (None: no limit beyond the retries):
    # the streaming loop calls on its own thread, and retries later itself while it keeps polling.
    call_budget_s: float | None = Field(default=None, gt=0)
    backoff_initial_s: float = Field(default=0.1, ge=0)
    backoff_max_s: float = Field(default=2.0, ge=0)
    # An unknown id is remembered this long: a stream of records naming it costs one lookup, not one each.
    not_found_ttl_s: float = Field(default=30.0, ge=0)


class SchemaNotFound(LookupError):
    """The registry does not know this schema id (or this schema under this subject)."""


class SchemaRefused(ConfigError):
    """The registry refused to register a schema (409/422): it does not fit the subject."""


class NotARegistry(RegistryUnavailable):
    """Something answers at the URL, but not as a Confluent-compatible registry (a wrong path, say)."""


class RegistryDenied(RegistryUnavailable):
    """The registry refused the request's credentials, or their absence (401/403)."""


class SchemaRegistryClient:
    """Fetches and registers Avro schemas; ``schema_by_id`` answers from its cache after the first call."""

    def __init__(
        self,
        config: RegistryConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._clock = clock
        self._by_id: dict[int, AvroSchema] = {}
        self._missing: dict[int, tuple[float, str]] = {}  # id -> (forgotten at, the reason)
        self._lock = threading.Lock()
        self._headers = {"Accept": _CONTENT_TYPE, "Content-Type": _CONTENT_TYPE}
        if config.basic_auth_user_info:
            token = base64.b64encode(config.basic_auth_user_info.encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        elif config.bearer_token:
            self._headers["Authorization"] = f"Bearer {config.bearer_token}"

    def schema_by_id(self, schema_id: int) -> AvroSchema:
        """The writer schema registered as ``schema_id``; raises SchemaNotFound or RegistryUnavailable.

        Answers from its cache after the first success, and for ``not_found_ttl_s`` after a SchemaNotFound
        (a poison record's unknown id would otherwise cost a registry round trip in every batch).
        """
        with self._lock:
            cached = self._by_id.get(schema_id)
            missing = self._missing.get(schema_id)
        if cached is not None:
            return cached
        if missing is not None and self._clock() < missing[0]:
            raise SchemaNotFound(missing[1])
        try:
            schema = self._fetch(schema_id)
        except SchemaNotFound as exc:
            with self._lock:
                self._missing[schema_id] = (self._clock() + self.config.not_found_ttl_s, str(exc))
                if len(self._missing) > MAX_MISSING:  # hostile ids must not grow it without bound
                    del self._missing[next(iter(self._missing))]  # the oldest
            raise
        with self._lock:
            self._by_id[schema_id] = schema
            self._missing.pop(schema_id, None)
        return schema

    def _fetch(self, schema_id: int) -> AvroSchema:
        body = self._request("GET", f"/schemas/ids/{schema_id}")
        if not isinstance(body, dict):
            raise SchemaNotFound(f"schema {schema_id}: the registry's answer is not a JSON object")
        if body.get("schemaType", "AVRO") != "AVRO" or body.get("references"):
            raise SchemaNotFound(f"schema {schema_id} is not a self-contained Avro schema")
        try:
            return AvroSchema.parse(body["schema"])
        except (SchemaParseError, KeyError) as exc:
            raise SchemaNotFound(f"schema {schema_id} is not valid Avro: {exc}") from exc

    def subjects(self) -> list[str]:
        """The registry's subjects: the call that tells a Confluent-compatible registry from anything else.

        Raises NotARegistry when the answer is a 404 or not a list of subjects, RegistryDenied, or
        RegistryUnavailable.
        """
        try:
            body = self._request("GET", "/subjects")
        except SchemaNotFound as exc:
            raise NotARegistry(str(exc)) from exc
        if not isinstance(body, list) or not all(isinstance(s, str) for s in body):
            raise NotARegistry("GET /subjects gave no list of subjects")
        return body

    def register(self, subject: str, schema: AvroSchema) -> int:
        """Register ``schema`` under ``subject`` (idempotent); its id. Raises ConfigError when refused."""
        path = f"/subjects/{_quote(subject)}/versions"
        return _schema_id(self._request("POST", path, {"schema": schema.text}), path)

    def lookup(self, subject: str, schema: AvroSchema) -> int:
        """The id of ``schema`` under ``subject``; raises SchemaNotFound if it was never registered there."""
        path = f"/subjects/{_quote(subject)}"
        return _schema_id(self._request("POST", path, {"schema": schema.text}), path)

    def versions(self, subject: str) -> list[int]:
        """The version numbers of ``subject``, oldest first; [] when the subject does not exist."""
        path = f"/subjects/{_quote(subject)}/versions"
        try:
            body = self._request("GET", path)
        except SchemaNotFound:
            return []
        if not isinstance(body, list) or not all(isinstance(v, int) for v in body):
            raise RegistryUnavailable(f"GET {path}: the registry's answer is no list of versions")
        return sorted(body)

    def version(self, subject: str, version: int) -> AvroSchema:
        """The schema registered as ``version`` of ``subject``."""
        path = f"/subjects/{_quote(subject)}/versions/{version}"
        body = self._request("GET", path)
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise RegistryUnavailable(f"GET {path}: the registry's answer has no schema")
        try:
            return AvroSchema.parse(body["schema"])
        except SchemaParseError as exc:
            raise SchemaNotFound(f"GET {path}: {exc}") from exc

    def compatible(self, subject: str, schema: AvroSchema) -> bool:
        """Whether ``register`` would accept ``schema`` under ``subject``; registers nothing.

        Confluent's rule: compatible with the subject's latest version under its compatibility level, and a
        subject that does not exist yet accepts anything. Apicurio's ccompat API answers false even where the
        level is NONE and registering succeeds, so a false is checked against the level.
        """
        path = f"/compatibility/subjects/{_quote(subject)}/versions/latest"
        try:
            body = self._request("POST", path, {"schema": schema.text})
        except SchemaNotFound:  # no such subject, or no version of it yet
            return True
        if not isinstance(body, dict) or not isinstance(body.get("is_compatible"), bool):
            raise RegistryUnavailable(f"POST {path}: the registry's answer has no is_compatible")
        return bool(body["is_compatible"]) or self.compatibility(subject) == "NONE"

    def compatibility(self, subject: str) -> str:
        """The compatibility level ``subject`` is checked with (its own, else the registry's default)."""
        path = f"/config/{_quote(subject)}?defaultToGlobal=true"
        body = self._request("GET", path)
        level = body.get("compatibilityLevel", body.get("compatibility")) if isinstance(body, dict) else None
        if not isinstance(level, str):
            raise RegistryUnavailable(f"GET {path}: the registry's answer has no compatibility level")
        return level

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        """One call with bounded retries on transient faults; translates every failure into our tree.

        The answer is the parsed JSON body, whatever its shape: callers check it is the one they expect.
        """
        delay = self.config.backoff_initial_s
        url = self.config.url.rstrip("/") + path
        data = None if payload is None else json.dumps(payload).encode()
        last = "no attempt"
        budget = self.config.call_budget_s
        deadline = self._clock() + budget if budget is not None else None
        attempts = 0
        for attempt in range(self.config.max_retries + 1):
            timeout = self.config.timeout_s
            if attempt:
                if deadline is not None and self._clock() + delay >= deadline:
                    break  # the budget is spent: the caller retries later
                self._sleep(delay)
                delay = min(delay * 2, self.config.backoff_max_s)
            if deadline is not None:
                timeout = min(timeout, max(deadline - self._clock(), 0.001))
            request = urllib.request.Request(url, data=data, method=method, headers=self._headers)
            attempts += 1
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return _parse(response.read(MAX_ANSWER_BYTES + 1), method, path)
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                detail = _detail(exc)
                exc.close()  # an error response still holds its connection
                if exc.code == 404:
                    if path == "/subjects":  # the one path every registry serves: the URL is wrong
                        raise SchemaNotFound(f"HTTP 404 on {path}") from exc
                    raise SchemaNotFound(f"{method} {path}: not found ({detail})") from exc
                if exc.code in (401, 403):
                    raise RegistryDenied(f"HTTP {exc.code} on {path}") from exc
                if exc.code in (409, 422):
                    raise SchemaRefused(f"{method} {path}: {detail}") from exc
                if exc.code < 500 and exc.code != 429:
                    raise RegistryUnavailable(f"registry answered {exc.code} to {method} {path}") from exc
            except _TRANSIENT as exc:
                last = _reason(exc, timeout)
                if isinstance(getattr(exc, "reason", exc), ssl.SSLError):  # a setting, not a moment: no retry
                    raise RegistryUnavailable(f"{method} {path}: {last}") from exc
        raise RegistryUnavailable(f"{method} {path}: {last}; {attempts} attempts")


def display_url(url: str) -> str:
    """``url`` as it may be shown: any user and password in it replaced by ``***``."""
    return re.sub(r"//[^/@]*@", "//***@", url, count=1)


def _reason(exc: BaseException, timeout_s: float) -> str:
    """One failed attempt in words (urllib wraps the cause of a failed connection in ``reason``)."""
    cause = getattr(exc, "reason", exc)
    if isinstance(cause, ssl.SSLError):
        detail = getattr(cause, "verify_message", None) or cause.reason or str(cause)
        hint = "; does the port speak plain http?" if cause.reason == "WRONG_VERSION_NUMBER" else ""
        return f"TLS handshake failed ({detail}){hint}"
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve the host ({cause.strerror})"
    if isinstance(cause, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, http.client.HTTPException | ConnectionError):
        return f"the connection broke ({cause}): not an HTTP server?"
    if isinstance(cause, ValueError):
        return "the answer is not JSON"
    return str(getattr(cause, "strerror", None) or cause)


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")


def _schema_id(body: Any, path: str) -> int:
    if isinstance(body, dict) and isinstance(body.get("id"), int):
        return int(body["id"])
    raise RegistryUnavailable(f"POST {path}: the registry's answer has no schema id")


def _parse(data: bytes, method: str, path: str) -> Any:
    """The JSON of an answer; one that can never be right (too large, too deep) is SchemaNotFound."""
    if len(data) > MAX_ANSWER_BYTES:
        raise SchemaNotFound(f"{method} {path}: the answer is larger than {MAX_ANSWER_BYTES} bytes")
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise SchemaNotFound(f"{method} {path}: the answer is nested too deeply to parse") from exc


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        message = json.loads(exc.read(_MAX_DETAIL_BYTES)).get("message", exc.reason)
    except (ValueError, OSError, RecursionError, AttributeError):
        message = exc.reason
    return str(message)[:500]
