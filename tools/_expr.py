"""Safe filter expressions over bus messages (`vigil topic echo --filter`).

An expression such as `m.output.confidence > 0.5 and m.stream_id == "cam0"` is parsed with
`ast` and compiled once into a tree of closures over a small whitelist: literals, the names
bound by the caller, attribute and index access into the decoded message, comparisons,
boolean operators, `not`, unary minus, plain arithmetic and `len`/`abs`. Nothing else parses:
no other calls, no comprehensions, no lambdas, no dunder access, and `eval` is never used, so
a filter can read a message and nothing more.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any, Final

from vigil.errors import VigilError

__all__ = ["ExpressionError", "Filter", "MissingField", "compile_filter"]

Scope = Mapping[str, Any]
_Eval = Callable[[Scope], Any]


class ExpressionError(VigilError):
    """A filter expression that does not parse or uses something outside the whitelist."""

    def __init__(self, expression: str, column: int, reason: str) -> None:
        super().__init__(f"filter {expression!r}, column {column + 1}: {reason}")
        self.expression = expression
        self.column = column
        self.reason = reason


class MissingField(VigilError, LookupError):
    """The message has no such field or index (the filter is then false for it)."""


_COMPARE: Final[dict[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}

_ARITH: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}

_FUNCTIONS: Final[dict[str, Callable[[Any], Any]]] = {"len": len, "abs": abs}


def _number(x: Any) -> int | float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError(f"{type(x).__name__} is not a number")
    return x


def _field(value: Any, key: Any) -> Any:
    try:
        if isinstance(value, Mapping):
            return value[key]
        if isinstance(value, list | tuple) and isinstance(key, int) and not isinstance(key, bool):
            return value[key]
    except (KeyError, IndexError):
        pass
    raise MissingField(key)


class _Compiler:
    def __init__(self, source: str, names: frozenset[str]) -> None:
        self.source = source
        self.names = names

    def fail(self, node: ast.AST, reason: str) -> ExpressionError:
        return ExpressionError(self.source, getattr(node, "col_offset", 0), reason)

    def compile(self, node: ast.AST) -> _Eval:
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, str | int | float | bool | None):
                raise self.fail(node, f"literal {node.value!r} is not allowed")
            value = node.value
            return lambda scope: value
        if isinstance(node, ast.Name):
            if node.id not in self.names:
                raise self.fail(
                    node, f"unknown name {node.id!r}; use {', '.join(sorted(self.names))}"
                )
            name = node.id
            return lambda scope: scope[name]
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise self.fail(node, "names starting with '_' are not allowed")
            inner, attr = self.compile(node.value), node.attr
            return lambda scope: _field(inner(scope), attr)
        if isinstance(node, ast.Subscript):
            if isinstance(node.slice, ast.Slice):
                raise self.fail(node, "slices are not allowed")
            inner, key = self.compile(node.value), self.compile(node.slice)
            return lambda scope: _field(inner(scope), key(scope))
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.BoolOp):
            parts = [self.compile(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda scope: all(p(scope) for p in parts)
            return lambda scope: any(p(scope) for p in parts)
        if isinstance(node, ast.UnaryOp):
            operand = self.compile(node.operand)
            if isinstance(node.op, ast.Not):
                return lambda scope: not operand(scope)
            if isinstance(node.op, ast.USub):
                return lambda scope: -_number(operand(scope))
            if isinstance(node.op, ast.UAdd):
                return lambda scope: +_number(operand(scope))
            raise self.fail(node, "only 'not', '-' and '+' are allowed as unary operators")
        if isinstance(node, ast.BinOp):
            op = _ARITH.get(type(node.op))
            if op is None:
                raise self.fail(node, "only + - * / % are allowed")
            left, right = self.compile(node.left), self.compile(node.right)
            return lambda scope: op(_number(left(scope)), _number(right(scope)))
        if isinstance(node, ast.List | ast.Tuple):
            items = [self.compile(e) for e in node.elts]
            return lambda scope: [i(scope) for i in items]
        if isinstance(node, ast.Call):
            return self._call(node)
        raise self.fail(node, f"{type(node).__name__} is not allowed in a filter")

    def _compare(self, node: ast.Compare) -> _Eval:
        first = self.compile(node.left)
        ops = [_COMPARE[type(op)] for op in node.ops]
        rest = [self.compile(c) for c in node.comparators]

        def compare(scope: Scope) -> bool:
            left = first(scope)
            for op, right_of in zip(ops, rest, strict=True):
                right = right_of(scope)
                if not op(left, right):
                    return False
                left = right
            return True

        return compare

    def _call(self, node: ast.Call) -> _Eval:
        func = node.func
        if not isinstance(func, ast.Name) or func.id not in _FUNCTIONS:
            raise self.fail(node, f"only {', '.join(sorted(_FUNCTIONS))} may be called")
        if len(node.args) != 1 or node.keywords:
            raise self.fail(node, f"{func.id} takes exactly one argument")
        fn, arg = _FUNCTIONS[func.id], self.compile(node.args[0])
        return lambda scope: fn(arg(scope))


class Filter:
    """A compiled filter: call it with the names it was compiled for; True keeps a message.

    A message without a field the expression reads, or with a value of the wrong type for an
    operator, does not match; `skipped` counts those and `last_problem` says why, so a typo in
    a field name is visible rather than silently matching nothing.
    """

    def __init__(self, source: str, evaluate: _Eval) -> None:
        self.source = source
        self._evaluate = evaluate
        self.skipped = 0
        self.last_problem = ""

    def __call__(self, **scope: Any) -> bool:
        try:
            return bool(self._evaluate(scope))
        except MissingField as exc:
            self.last_problem = f"no field {exc.args[0]!r}"
        except (TypeError, ZeroDivisionError) as exc:
            self.last_problem = str(exc)
        self.skipped += 1
        return False


def compile_filter(source: str, names: frozenset[str] = frozenset({"m", "e", "topic"})) -> Filter:
    """Parse and compile `source`; ExpressionError names the column and what is not allowed."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(source, max(0, (exc.offset or 1) - 1), exc.msg) from exc
    return Filter(source, _Compiler(source, names).compile(tree.body))
