"""ONNX sessions are reused across compiles of graphs that share a model, and freed with the last graph."""

from __future__ import annotations

import gc
import json

import pytest

from examples.iris.train import train as train_iris
from worker.graph import compile_graph, load_graph
from worker.graph.onnx_runtime import SessionCache
from worker.models import ModelStore


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], ModelStore]:
    root = tmp_path_factory.mktemp("iris")
    store = ModelStore(root / "store")
    return json.loads(train_iris(root, store).graph.read_text()), store


class CountingStore:
    """A model store that counts its loads."""

    def __init__(self, store: ModelStore) -> None:
        self.store, self.loads = store, 0

    def load(self, model_id: str) -> bytes:
        self.loads += 1
        return self.store.load(model_id)


def test_a_second_graph_with_the_same_model_reuses_its_session(
    iris: tuple[dict[str, object], ModelStore],
) -> None:
    spec, store = iris
    counting, cache = CountingStore(store), SessionCache()
    first = compile_graph(load_graph(spec), counting, sessions=cache)
    renamed = compile_graph(load_graph({**spec, "name": "renamed"}), counting, sessions=cache)
    assert first.digest != renamed.digest
    assert (cache.opened, counting.loads) == (len(first.model_ids), len(first.model_ids))
    other_threads = compile_graph(load_graph(spec), counting, sessions=cache, intra_op_num_threads=2)
    assert cache.opened == 2 * len(first.model_ids)  # other options: another session
    del first, renamed, other_threads
    gc.collect()
    compile_graph(load_graph(spec), counting, sessions=cache)
    assert cache.opened == 3 * len(spec_models(spec))  # nothing held them any more: opened again


def test_without_a_cache_each_compile_opens_its_own(iris: tuple[dict[str, object], ModelStore]) -> None:
    spec, store = iris
    counting = CountingStore(store)
    compile_graph(load_graph(spec), counting)
    compile_graph(load_graph(spec), counting)
    assert counting.loads == 2 * len(spec_models(spec))


def spec_models(spec: dict[str, object]) -> list[str]:
    return sorted({m for m in json.dumps(spec).split('"') if m.startswith("sha256:")})
