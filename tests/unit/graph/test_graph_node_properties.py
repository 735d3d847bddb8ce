"""Property tests: each vectorised node equals a per-row Python reference on random inputs with nulls."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pytest
from graph_helpers import run
from hypothesis import given, settings
from hypothesis import strategies as st

settings.register_profile("graph", max_examples=60, deadline=None)
settings.load_profile("graph")

FLOATS = st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)), min_size=1, max_size=30)
WORDS = st.sampled_from(["vw", "VW ", " bmw", "audi", "Fiat", "", "x y"])
STRINGS = st.lists(st.one_of(st.none(), WORDS, st.text(max_size=4)), min_size=1, max_size=30)
NUMERIC_TEXT = st.lists(
    st.one_of(
        st.none(),
        st.sampled_from(["1", " 2.5", "-3e2", "nan?", "abc", "", "7 "]),
        st.integers(-99, 99).map(str),
    ),
    min_size=1,
    max_size=30,
)
TIMES = st.lists(
    st.one_of(st.none(), st.datetimes(dt.datetime(1950, 1, 1), dt.datetime(2100, 1, 1))),
    min_size=1,
    max_size=30,
)


def floats(values: list[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def strings(values: list[str | None]) -> np.ndarray:
    return np.array([*values, None], dtype=object)[:-1]  # keeps object dtype even for all-None lists


def same(got: np.ndarray, want: list[Any]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got.tolist(), want, strict=True):
        if isinstance(w, float) and math.isnan(w):
            assert isinstance(g, float) and math.isnan(g)
        elif isinstance(w, float):  # numpy and math may differ in the last ulp
            assert math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-300), (got, want)
        else:
            assert g == w, (got, want)


def one(
    node: dict[str, Any], inputs: list[dict[str, Any]], output: dict[str, Any], batch: dict[str, Any]
) -> Any:
    return run([{"id": "n", **node}], inputs, [output], batch)


FX = [{"name": "x", "dtype": "float64", "nullable": True}]
SX = [{"name": "s", "dtype": "string", "nullable": True}]


@given(FLOATS, st.floats(-10, 10))
def test_fillna(values: list[float | None], fill: float) -> None:
    got = one(
        {"kind": "fillna", "columns": ["x"], "value": fill},
        FX,
        {"name": "x", "dtype": "float64"},
        {"x": floats(values)},
    )
    same(got.columns["x"], [fill if v is None else v for v in values])


@given(STRINGS)
def test_fillna_string(values: list[str | None]) -> None:
    got = one(
        {"kind": "fillna", "columns": ["s"], "value": "?"},
        SX,
        {"name": "s", "dtype": "string"},
        {"s": strings(values)},
    )
    same(got.columns["s"], ["?" if v is None else v for v in values])


@given(STRINGS, st.sampled_from(["keep", "null", "default"]))
def test_map(values: list[str | None], unmapped: str) -> None:
    table = {"vw": "volkswagen", "audi": "audi ag"}
    node = {"kind": "map", "column": "s", "mapping": table, "unmapped": unmapped, "output": "m"}
    if unmapped == "default":
        node["default"] = "other"
    got = one(node, SX, {"name": "m", "dtype": "string", "nullable": True}, {"s": strings(values)})
    fallback = {"keep": None, "null": None, "default": "other"}[unmapped]
    want = [None if v is None else table.get(v, v if unmapped == "keep" else fallback) for v in values]
    same(got.columns["m"], want)


@given(NUMERIC_TEXT)
def test_astype_string_to_float_rejects_what_float_cannot_parse(values: list[str | None]) -> None:
    node = {"kind": "astype", "columns": ["s"], "dtype": "float64"}
    got = one(node, SX, {"name": "s", "dtype": "float64", "nullable": True}, {"s": strings(values)})
    want_rows, want = [], []
    for i, v in enumerate(values):
        try:
            parsed = math.nan if v is None else float(v.strip())
        except ValueError:
            continue
        want_rows.append(i)
        want.append(parsed)
    assert got.rows.tolist() == want_rows
    assert sorted(got.errors) == sorted(set(range(len(values))) - set(want_rows))
    same(got.columns["s"], want)


@given(FLOATS)
def test_astype_float_to_int_and_string(values: list[float | None]) -> None:
    node = {"kind": "astype", "columns": ["x"], "dtype": "int64"}
    got = one(node, FX, {"name": "x", "dtype": "int64", "nullable": True}, {"x": floats(values)})
    same(got.columns["x"], [math.nan if v is None else float(math.trunc(v)) for v in values])
    node = {"kind": "astype", "columns": ["x"], "dtype": "string"}
    got = one(node, FX, {"name": "x", "dtype": "string", "nullable": True}, {"x": floats(values)})
    same(got.columns["x"], [None if v is None else str(float(v) + 0.0) for v in values])  # -0.0 is "0.0"


@pytest.mark.parametrize("values", [[0.0, -0.0], [-0.0, 0.0]])
def test_astype_to_string_writes_both_zeros_as_0_in_any_order(values: list[float]) -> None:
    node = {"kind": "astype", "columns": ["x"], "dtype": "string"}
    got = one(node, FX, {"name": "x", "dtype": "string", "nullable": True}, {"x": floats(values)})
    assert got.columns["x"].tolist() == ["0.0", "0.0"]


@given(STRINGS, st.sampled_from(["lower", "upper", "strip"]))
def test_text(values: list[str | None], op: str) -> None:
    got = one(
        {"kind": "text", "columns": ["s"], "op": op},
        SX,
        {"name": "s", "dtype": "string", "nullable": True},
        {"s": strings(values)},
    )
    same(got.columns["s"], [None if v is None else getattr(v, op)() for v in values])


@given(STRINGS, st.lists(WORDS, min_size=1, max_size=3, unique=True))
def test_top_k(values: list[str | None], keep: list[str]) -> None:
    got = one(
        {"kind": "top_k", "column": "s", "keep": keep},
        SX,
        {"name": "s", "dtype": "string", "nullable": True},
        {"s": strings(values)},
    )
    same(got.columns["s"], [None if v is None else v if v in keep else "Others" for v in values])


@given(
    STRINGS,
    st.lists(WORDS, min_size=1, max_size=4, unique=True),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["float64", "int64", "bool"]),
    st.booleans(),
)
def test_one_hot(
    values: list[str | None], cats: list[str], drop_first: bool, reject: bool, dtype: str, nullable: bool
) -> None:
    if not nullable:
        values = ["vw" if v is None else v for v in values]
    node = {
        "kind": "one_hot",
        "column": "s",
        "categories": cats,
        "drop_first": drop_first,
        "handle_unknown": "reject" if reject else "ignore",
        "dtype": dtype,
        "keep_source": True,
    }
    out = cats[1:] if drop_first else cats
    outputs = [{"name": f"s_{c}", "dtype": dtype} for c in out] or [
        {"name": "s", "dtype": "string", "nullable": True}
    ]
    inputs = [{"name": "s", "dtype": "string", "nullable": nullable}]
    got = run([{"id": "n", **node}], inputs, outputs, {"s": strings(values)})
    kept = [i for i, v in enumerate(values) if not (reject and v is not None and v not in cats)]
    assert got.rows.tolist() == kept
    assert set(got.errors) == set(range(len(values))) - set(kept)
    for c in out:
        assert got.columns[f"s_{c}"].dtype == np.dtype(dtype)
        same(got.columns[f"s_{c}"], [values[i] == c for i in kept])


@given(FLOATS, st.sampled_from(["left", "right"]))
def test_bucketize(values: list[float | None], closed: str) -> None:
    edges, labels = [-100.0, 0.0, 18.0, 65.0, 1000.0], ["neg", "minor", "adult", "senior"]
    node = {
        "kind": "bucketize",
        "column": "x",
        "edges": edges,
        "labels": labels,
        "closed": closed,
        "output": "b",
    }
    got = one(
        node,
        [*FX, {"name": "y", "dtype": "float64"}],
        {"name": "b", "dtype": "string", "nullable": True},
        {"x": floats(values) % 1100 - 100, "y": floats(values)},
    )

    def ref(v: float) -> str | None:
        if math.isnan(v):
            return None
        for lo, hi, label in zip(edges, edges[1:], labels, strict=False):
            if (lo < v <= hi) if closed == "right" else (lo <= v < hi):
                return label
        return None

    same(got.columns["b"], [ref(v) for v in (floats(values) % 1100 - 100).tolist()])


def test_bucketize_with_a_nan_edge_keeps_the_bounds_check() -> None:
    # NaN passes the "edges increase strictly" check; comparing with a NaN last edge is False, so every row is
    # outside, as the explicit bounds check has always made it.
    node = {"kind": "bucketize", "column": "x", "edges": [0.0, 1.0, math.nan], "labels": ["a", "b"]}
    x = np.array([-1.0, 0.5, 3.0, math.nan])
    for closed in ("left", "right"):
        got = one(
            {**node, "closed": closed, "outside": "out"}, FX, {"name": "x", "dtype": "string"}, {"x": x}
        )
        assert got.columns["x"].tolist() == ["out"] * 4


@given(FLOATS)
def test_clip_scale_log1p(values: list[float | None]) -> None:
    x = floats(values)
    out = {"name": "x", "dtype": "float64", "nullable": True}
    got = one({"kind": "clip", "columns": ["x"], "lower": -5, "upper": 5}, FX, out, {"x": x})
    same(got.columns["x"], [math.nan if v is None else min(max(v, -5.0), 5.0) for v in values])
    got = one({"kind": "scale", "columns": ["x"], "mean": 2.0, "std": 4.0}, FX, out, {"x": x})
    same(got.columns["x"], [math.nan if v is None else (v - 2.0) / 4.0 for v in values])
    got = one({"kind": "log1p", "columns": ["x"]}, FX, out, {"x": np.abs(x)})
    same(got.columns["x"], [math.nan if v is None else math.log1p(abs(v)) for v in values])


@given(TIMES)
def test_datetime_parts(values: list[dt.datetime | None]) -> None:
    col = np.array(
        [np.datetime64("NaT") if v is None else np.datetime64(v, "ms") for v in values], "datetime64[ms]"
    )
    parts = ["year", "month", "day", "hour", "minute", "second", "dayofweek", "dayofyear"]
    outputs = [{"name": f"t_{p}", "dtype": "int64", "nullable": True} for p in parts]
    got = run(
        [{"id": "n", "kind": "datetime_parts", "column": "t", "parts": parts}],
        [{"name": "t", "dtype": "datetime64[ms]", "nullable": True}],
        outputs,
        {"t": col},
    )
    for p in parts:

        def ref(v: dt.datetime, p: str = p) -> int:
            return {"dayofweek": v.weekday(), "dayofyear": v.timetuple().tm_yday}.get(p) or getattr(v, p, 0)

        same(got.columns[f"t_{p}"], [math.nan if v is None else float(ref(v)) for v in values])


@given(FLOATS, FLOATS)
def test_expression(a: list[float | None], b: list[float | None]) -> None:
    n = min(len(a), len(b))
    x, y = floats(a[:n]), floats(b[:n])
    inputs = [*FX, {"name": "y", "dtype": "float64", "nullable": True}]
    expr = "where(x > 100 and not y < 0, log1p(abs(x)) / (y * y + 1), -x) + maximum(x, 2)"
    got = one(
        {"kind": "expr", "expr": expr, "output": "z"},
        inputs,
        {"name": "z", "dtype": "float64", "nullable": True},
        {"x": x, "y": y},
    )

    def ref(xv: float, yv: float) -> float:
        cond = (xv > 100) and not (yv < 0)
        val = math.log1p(abs(xv)) / (yv * yv + 1) if cond else -xv
        return math.nan if math.isnan(xv) else val + max(xv, 2.0)

    same(got.columns["z"], [ref(xv, yv) for xv, yv in zip(x.tolist(), y.tolist(), strict=True)])


@given(FLOATS)
def test_threshold(values: list[float | None]) -> None:
    node = {
        "kind": "threshold",
        "column": "x",
        "threshold": 0.5,
        "output": "d",
        "above": "yes",
        "below": "no",
    }
    got = one(node, FX, {"name": "d", "dtype": "string", "nullable": True}, {"x": floats(values)})
    same(got.columns["d"], [None if v is None else "yes" if v >= 0.5 else "no" for v in values])
