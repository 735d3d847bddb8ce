"""Fixtures shared by every test folder: a fresh prefix of the real S3-compatible store."""

from __future__ import annotations

import os
import uuid

import pytest

from worker.errors import ModelError
from worker.models.blobs import ObjectBlobs

# The object store of `make services` (scripts/services.py): S3Proxy on the registry port + 2.
DEFAULT_S3 = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:8083",
    "AWS_ACCESS_KEY_ID": "rtml",
    "AWS_SECRET_ACCESS_KEY": "rtml-local-secret",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}


@pytest.fixture
def s3_location(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh prefix of the S3Proxy bucket (``s3://rtml/test-<uuid>``); fails, never skips, without it."""
    for key, value in DEFAULT_S3.items():
        if key not in os.environ:
            monkeypatch.setenv(key, value)
    bucket = os.environ.get("RTML_S3_BUCKET", "rtml")
    location = f"s3://{bucket}/test-{uuid.uuid4().hex}"
    try:
        ObjectBlobs(location).list()
    except ModelError as exc:
        pytest.fail(
            f"S3Proxy not reachable at {os.environ['AWS_ENDPOINT_URL']} ({exc}): start `make services`"
        )
    return location
