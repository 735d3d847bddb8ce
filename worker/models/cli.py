"""``rtml-worker models upload MODEL.onnx`` and ``rtml-worker models list [--json]``.

``upload`` checks the model, stores it and prints its ``model_id`` alone on stdout (so scripts can capture
it). External data files next to the model are inlined into the stored model, so for such a model the id is
the sha256 of the self-contained model, not of the ``.onnx`` file. ``list`` prints a table or, with
``--json``, one JSON array of the metadata, and warns on stderr about each model stored with external data
by an older version (``load`` refuses those). Errors are ``ModelError``, which ``worker.cli.main`` turns into
exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from worker.models.store import MODEL_STORE_ENV, ModelInfo, ModelStore


def register(subparsers: Any) -> None:
    """Add the ``models`` command and its ``upload`` and ``list`` subcommands."""
    models = subparsers.add_parser("models", help="upload and list ONNX models in the model store")
    actions = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    upload = actions.add_parser("upload", help="store an ONNX model and print its model_id")
    upload.add_argument(
        "model", help="path to the .onnx file (external data is read from its folder and inlined)"
    )
    upload.add_argument("--name", help="a name to show in `models list` (default: the file name)")
    upload.add_argument(
        "--allow-custom-domains",
        action="store_true",
        help="accept operators outside the standard ONNX domains",
    )
    add_store_argument(upload)
    upload.set_defaults(func=_upload)

    listing = actions.add_parser("list", help="list the stored models")
    listing.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    add_store_argument(listing)
    listing.set_defaults(func=_list)


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--models STORE`` option shared by every command that reads the model store."""
    parser.add_argument(
        "--models",
        metavar="STORE",
        help=f"model store: a folder or s3://bucket/prefix (default: ${MODEL_STORE_ENV} or ./.models)",
    )


def _upload(args: argparse.Namespace) -> int:
    store = ModelStore(args.models)
    info = store.upload(args.model, name=args.name, allow_custom_domains=args.allow_custom_domains)
    print(info.model_id)
    return 0


def _list(args: argparse.Namespace) -> int:
    infos = ModelStore(args.models).list_models()
    if args.json:
        print(json.dumps([info.to_json() for info in infos], indent=2))
    else:
        print(format_table(infos))
    for info in infos:
        if info.external_data:  # stdout stays parseable; the warning goes beside it
            print(
                f"warning: {info.model_id} keeps external data its id does not cover and will be refused "
                "at load; re-upload its original with `rtml-worker models upload MODEL.onnx`",
                file=sys.stderr,
            )
    return 0


def format_table(infos: list[ModelInfo]) -> str:
    """A plain aligned table: id, name, size, opset, inputs, upload time."""
    header = ("MODEL_ID", "NAME", "SIZE", "OPSET", "INPUTS", "UPLOADED_AT")
    rows = [header] + [
        (
            info.model_id,
            info.name,
            str(info.size),
            ",".join(f"{domain}={version}" for domain, version in sorted(info.opset.items())),
            ",".join(value["name"] for value in info.inputs),
            info.uploaded_at,
        )
        for info in infos
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
