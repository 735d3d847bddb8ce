"""Safe, vectorised expressions: ``"km / (age + 1)"``, ``"where(km > 1e5, 1, 0)"``, ``"log1p(abs(price))"``.

``compile_expr`` parses the text with ``ast`` and turns the tree into a plan of numpy calls over whole
columns; nothing is ever evaluated as Python code (no eval, exec or compile). Allowed: numeric and bool
literals, column names (``col("device.os")`` for names that are not identifiers), arithmetic, comparisons
(chains too), ``and``/``or``/``not`` (as numpy logical ops), and the functions in ``FUNCTIONS``. Anything else
(attributes, subscripts, lambdas, other calls, keyword arguments, strings outside ``col()``) raises
``ExprError`` at load.

Values are float64 or bool arrays; a numeric column is read as float64, so nulls (NaN) propagate and
comparisons with a null are False.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from worker.columns import Batch
from worker.graph.types import ColType

Kind = Literal["num", "bool"]
Array = npt.NDArray[Any]
MAX_LENGTH = 2000
MAX_DEPTH = 40


class ExprError(ValueError):
    """The expression is not allowed or does not type-check; the message says where."""


@dataclass(frozen=True)
class Function:
    fn: Callable[..., Array]
    arity: int
    result: Kind | None  # None: numeric, unless every value argument is bool (where)


FUNCTIONS: dict[str, Function] = {
    **{name: Function(getattr(np, name), 1, "num") for name in (
        "abs", "sqrt", "log", "log1p", "log2", "log10", "exp", "expm1", "floor", "ceil", "sign",
        "sin", "cos", "tan", "tanh", "arctan")},
    "round": Function(np.round, 1, "num"),
    "minimum": Function(np.minimum, 2, "num"),
    "maximum": Function(np.maximum, 2, "num"),
    "power": Function(np.power, 2, "num"),
    "clip": Function(np.clip, 3, "num"),
    "isnan": Function(np.isnan, 1, "bool"),
    "isfinite": Function(np.isfinite, 1, "bool"),
    "where": Function(np.where, 3, None),
}  # fmt: skip

_BINARY: dict[type[ast.operator], Callable[..., Array]] = {
    ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
    ast.FloorDiv: np.floor_divide, ast.Mod: np.mod, ast.Pow: np.power,
}  # fmt: skip
_COMPARE: dict[type[ast.cmpop], Callable[..., Array]] = {
    ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
    ast.Eq: np.equal, ast.NotEq: np.not_equal,
}  # fmt: skip


@dataclass(frozen=True)
class Node:
    """One step of the plan: a column, a constant, or a numpy call on sub-steps."""

    kind: Kind
    column: str | None = None
    constant: float | bool | None = None
    fn: Callable[..., Array] | None = None
    args: tuple[Node, ...] = ()


@dataclass(frozen=True)
class Expression:
    """A compiled expression: the columns it reads, its result kind, and ``evaluate(batch, n)``."""

    text: str
    columns: tuple[str, ...]
    kind: Kind
    root: Node

    def evaluate(self, batch: Batch, n: int) -> Array:
        """The value for every row of ``batch`` (``n`` rows): float64 or bool. Never warns on NaN or inf."""
        with np.errstate(all="ignore"):
            out = _eval(self.root, batch)
        dtype = np.bool_ if self.kind == "bool" else np.float64
        result: Array = np.asarray(out, dtype=dtype)
        return np.full(n, result) if result.ndim == 0 else result


def compile_expr(text: str, types: Mapping[str, ColType]) -> Expression:
    """Parse and type-check ``text`` against the columns in ``types``. Raises ``ExprError``."""
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"syntax error in expression {text!r}: {exc.msg}") from exc
    columns: dict[str, None] = {}
    root = _Builder(types, columns).build(tree.body, 0)
    return Expression(text, tuple(columns), root.kind, root)


class _Builder:
    def __init__(self, types: Mapping[str, ColType], columns: dict[str, None]) -> None:
        self.types, self.columns = types, columns

    def build(self, node: ast.expr, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise ExprError("expression nested too deeply")
        d = depth + 1
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool):
                return Node("bool", constant=node.value)
            if isinstance(node.value, int | float):
                return Node("num", constant=float(node.value))
            raise ExprError(f"literal {node.value!r} not allowed (only numbers and True/False)")
        if isinstance(node, ast.Name):
            return self.column(node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return Node(
                "num", fn=_BINARY[type(node.op)], args=(self.num(node.left, d), self.num(node.right, d))
            )
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return Node("bool", fn=np.logical_not, args=(self.boolean(node.operand, d),))
            if isinstance(node.op, ast.USub | ast.UAdd):
                sign = np.negative if isinstance(node.op, ast.USub) else np.positive
                return Node("num", fn=sign, args=(self.num(node.operand, d),))
        if isinstance(node, ast.BoolOp):
            fn = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            return self.fold(fn, [self.boolean(v, d) for v in node.values])
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            operands = [self.num(v, d) for v in (node.left, *node.comparators)]
            pairs = [Node("bool", fn=_COMPARE[type(op)], args=(operands[i], operands[i + 1]))
                     for i, op in enumerate(node.ops)]  # fmt: skip
            return self.fold(np.logical_and, pairs)
        if isinstance(node, ast.Call):
            return self.call(node, d)
        raise ExprError(f"{type(node).__name__} not allowed in an expression: {ast.unparse(node)!r}")

    def column(self, name: str) -> Node:
        if name not in self.types:
            raise ExprError(f"unknown column {name!r} in expression")
        ct = self.types[name]
        if ct.width is not None or not ct.numeric:
            raise ExprError(f"column {name!r} is {ct}; expressions take numeric or non-null bool columns")
        self.columns[name] = None
        return Node("bool" if ct.dtype == "bool" else "num", column=name)

    def call(self, node: ast.Call, depth: int) -> Node:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if node.keywords or name is None:
            raise ExprError(f"call not allowed: {ast.unparse(node)!r}")
        if name == "col":
            arg = node.args[0] if len(node.args) == 1 else None
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                raise ExprError("col() takes one string literal: a column name")
            return self.column(arg.value)
        spec = FUNCTIONS.get(name)
        if spec is None:
            raise ExprError(f"function {name!r} not allowed (allowed: col, {', '.join(sorted(FUNCTIONS))})")
        if len(node.args) != spec.arity:
            raise ExprError(f"{name}() takes {spec.arity} argument(s), got {len(node.args)}")
        if name == "where":
            cond = self.boolean(node.args[0], depth)
            a, b = (self.build(arg, depth) for arg in node.args[1:])
            if a.kind == b.kind:
                return Node(a.kind, fn=spec.fn, args=(cond, a, b))
            return Node("num", fn=spec.fn, args=(cond, _as_num(a), _as_num(b)))
        return Node(spec.result or "num", fn=spec.fn, args=tuple(self.num(arg, depth) for arg in node.args))

    def num(self, node: ast.expr, depth: int) -> Node:
        return _as_num(self.build(node, depth))

    def boolean(self, node: ast.expr, depth: int) -> Node:
        built = self.build(node, depth)
        if built.kind != "bool":
            raise ExprError(f"{ast.unparse(node)!r} is numeric where a condition is needed; compare it")
        return built

    @staticmethod
    def fold(fn: Callable[..., Array], nodes: list[Node]) -> Node:
        out = nodes[0]
        for nxt in nodes[1:]:
            out = Node("bool", fn=fn, args=(out, nxt))
        return out


def _as_num(node: Node) -> Node:
    if node.kind == "num":
        return node
    return Node("num", fn=_to_float, args=(node,))


def _to_float(x: Any) -> Array:
    return np.asarray(x, dtype=np.float64)


def _eval(node: Node, batch: Batch) -> Any:
    if node.column is not None:
        col = batch[node.column]
        return col if node.kind == "bool" else np.asarray(col, dtype=np.float64)
    if node.fn is None:
        return node.constant
    return node.fn(*(_eval(arg, batch) for arg in node.args))
