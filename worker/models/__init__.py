"""Content-addressed ONNX model store (``ModelStore``) and the ``models upload|list`` subcommands."""

from worker.models.store import (
    DEFAULT_STORE_DIR,
    MODEL_STORE_ENV,
    ModelInfo,
    ModelStore,
    default_store_dir,
    model_id_of,
    parse_model_id,
)

__all__ = [
    "DEFAULT_STORE_DIR",
    "MODEL_STORE_ENV",
    "ModelInfo",
    "ModelStore",
    "default_store_dir",
    "model_id_of",
    "parse_model_id",
]
