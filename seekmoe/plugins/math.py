"""The built-in "math" plugin, the symbolic reasoning module: solve, simplify, differentiate... on sympy.

The model's text never reaches Python's or sympy's parser (sympify and parse_expr call eval). An expression is
tokenised here, parsed with `ast` in "eval" mode, checked node by node against a whitelist, and the sympy
expression is built from the tree by hand: only arithmetic, one comparison, calls of the functions in FUNCTIONS
with positional arguments, the constants in CONSTANTS, numbers, and symbols (1-3 letters, optionally followed by
digits: x, y2, abc, x_1; or a Greek letter's name). Sizes are bounded before sympy computes anything, so
`9**9**9**9` fails in microseconds; call()'s process timeout is the backstop for what is legitimately slow.

Beyond Python's syntax: `^` is a power; `a = b` is an equation; `e` is Euler's number, like `E`; and
multiplication may be implicit between a number, a symbol, a constant or a closing parenthesis and a following
number, symbol, constant, function or opening parenthesis: `2x`, `3(x+1)`, `(x+1)(x-1)`, `x y`, `2sin(x)`, `x(x+1)`.
`xy` is one symbol, not x*y.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import math
import re
from types import MappingProxyType

import mpmath
import sympy
from sympy.integrals.manualintegrate import integral_steps

from seekmoe.errors import SeekmoeError
from seekmoe.plugins import Plugin

MAX_CHARS = 2_000
MAX_NODES = 500
MAX_DEPTH = 100  # the builder recurses once per level; also bounds a left-nested sum to 100 terms
MAX_PARENS = 60
# Python refuses to print an int of more than 4,300 digits, and a tool result is capped at 8,000 characters
MAX_DIGITS = 4_000
MAX_EXPAND_POWER = 200  # (x + y + z)**n expands to ~n²/2 terms
MAX_FACTOR_DIGITS = 40  # integer factorisation beyond this may run for hours

OPERATIONS = ("evaluate", "simplify", "expand", "factor", "solve", "diff", "integrate", "limit")


class MathError(SeekmoeError, ValueError):
    """Input the math plugin refuses or cannot handle; the message says what and why."""


def _f(fn, lo: int, hi: int | None = None):
    return fn, lo, lo if hi is None else hi


FUNCTIONS = MappingProxyType({
    **{n: _f(getattr(sympy, n), 1) for n in (
        "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "acot", "sinh", "cosh", "tanh",
        "asinh", "acosh", "atanh", "exp", "sqrt", "cbrt", "sign", "floor", "ceiling", "factorial", "re", "im",
        "conjugate", "erf")},
    "log": _f(sympy.log, 1, 2), "ln": _f(sympy.log, 1), "abs": _f(sympy.Abs, 1), "Abs": _f(sympy.Abs, 1),
    "ceil": _f(sympy.ceiling, 1), "root": _f(sympy.root, 2), "atan2": _f(sympy.atan2, 2),
    "binomial": _f(sympy.binomial, 2), "gcd": _f(sympy.gcd, 2), "lcm": _f(sympy.lcm, 2),
    "min": _f(sympy.Min, 2, 10), "max": _f(sympy.Max, 2, 10),
})
CONSTANTS = MappingProxyType({"pi": sympy.pi, "E": sympy.E, "e": sympy.E, "I": sympy.I, "oo": sympy.oo,
                              "inf": sympy.oo})
GREEK = frozenset(("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "mu",
                   "nu", "xi", "omicron", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega"))
SYMBOL = re.compile(r"[A-Za-z]{1,3}(?:_?[0-9]{1,3})?")
# harmless as sympy symbols, but a model writing them is trying Python, so say no plainly
PYTHON_NAMES = frozenset(dir(builtins)) | {"os", "sys", "io", "re", "np", "self", "cls"}

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>\*\*|//|==|<=|>=|!=|[-+*/%^()=<>,])
""", re.VERBOSE)
_BAD_CHARS = {"'": "strings are not allowed", '"': "strings are not allowed", ".": "attribute access is not allowed",
              "[": "lists and subscripts are not allowed", "]": "lists and subscripts are not allowed",
              "{": "sets and dicts are not allowed", "}": "sets and dicts are not allowed",
              ":": "':' is not allowed (no lambda, slices or dicts)", ";": "only one expression is allowed",
              "\\": "backslashes are not allowed", "#": "comments are not allowed",
              "@": "'@' is not allowed", "!": "'!' is not allowed; write factorial(n)"}
_NODE_REASONS = {ast.Attribute: "attribute access is not allowed", ast.Subscript: "subscripts are not allowed",
                 ast.Lambda: "lambda is not allowed", ast.List: "lists are not allowed",
                 ast.Tuple: "tuples are not allowed", ast.Set: "sets are not allowed",
                 ast.Dict: "dicts are not allowed",
                 ast.BoolOp: "'and'/'or' are not allowed", ast.IfExp: "conditional expressions are not allowed",
                 ast.Starred: "'*' unpacking is not allowed", ast.NamedExpr: "':=' is not allowed",
                 ast.JoinedStr: "strings are not allowed", ast.ListComp: "comprehensions are not allowed",
                 ast.GeneratorExp: "comprehensions are not allowed"}
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.Mod: lambda a, b: sympy.Mod(a, b)}
_COMPARE = {ast.Eq: sympy.Eq, ast.NotEq: sympy.Ne, ast.Lt: sympy.Lt, ast.LtE: sympy.Le, ast.Gt: sympy.Gt,
            ast.GtE: sympy.Ge}


def _short(text: object, n: int = 60) -> str:
    s = str(text)
    return s if len(s) <= n else s[:n] + "..."


# --------------------------------------------------------------------------------------------------- parsing

def check_name(name: str) -> None:
    """MathError unless `name` is a function, a constant or a symbol we allow."""
    if name in FUNCTIONS or name in CONSTANTS:
        return
    if name.startswith("__") or name.endswith("__"):
        raise MathError(f"name {name!r} is not allowed (dunder names never are)")
    if name == "lambda":
        raise MathError("lambda is not allowed")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise MathError(f"name {name!r} is not allowed: it is a Python keyword")
    if name in PYTHON_NAMES:
        raise MathError(f"name {name!r} is not allowed: it is a Python name, and only math is accepted")
    if not (SYMBOL.fullmatch(name) or name in GREEK):
        hint = next((f"; did you mean {f}({name[len(f):]})?" for f in FUNCTIONS
                     if name.startswith(f) and SYMBOL.fullmatch(name[len(f):])), "")
        raise MathError(f"name {name!r} is not allowed: symbols are 1-3 letters optionally followed by digits "
                        f"(x, y2, abc) or a Greek letter's name, and functions are {', '.join(FUNCTIONS)}{hint}")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos, depth = [], 0, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            raise MathError(f"{_BAD_CHARS.get(ch, f'character {ch!r} is not allowed')} (at column {pos + 1})")
        pos = m.end()
        kind, value = m.lastgroup, m.group()
        if kind == "space":
            continue
        if kind == "name":
            check_name(value)
        elif value == "//":
            raise MathError("'//' is not allowed; write floor(a/b)")
        elif value == "(":
            depth += 1
            if depth > MAX_PARENS:
                raise MathError(f"parentheses nested more than {MAX_PARENS} deep")
        elif value == ")":
            depth -= 1
        out.append((kind, value))
    return out


def _is_operand_end(kind: str, value: str) -> bool:
    return kind == "number" or (kind == "name" and value not in FUNCTIONS) or value == ")"


def _is_operand_start(kind: str, value: str) -> bool:
    return kind in ("number", "name") or value == "("


def _python_text(text: str) -> str:
    """The expression as Python source: `^` as `**`, `=` as `==`, implicit multiplications written out."""
    tokens = _tokens(text)
    parts = []
    for i, (kind, value) in enumerate(tokens):
        if kind == "name" and value in FUNCTIONS and (i + 1 == len(tokens) or tokens[i + 1][1] != "("):
            raise MathError(f"function {value!r} needs parentheses, e.g. {value}(x)")
        if i and _is_operand_end(*tokens[i - 1]) and _is_operand_start(kind, value):
            if tokens[i - 1][0] == kind == "number":
                raise MathError(f"two numbers in a row: {tokens[i - 1][1]} {value}")
            parts.append("*")
        parts.append({"^": "**", "=": "=="}.get(value, value))
    return " ".join(parts)


def _check_tree(tree: ast.AST) -> None:
    nodes, stack = 0, [(tree, 0)]
    while stack:  # iterative: a deep tree must not exhaust Python's stack before we refuse it
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MathError(f"expression nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, ast.expr):
            nodes += 1
            if nodes > MAX_NODES:
                raise MathError(f"expression has more than {MAX_NODES} parts")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _check_size(value: sympy.Expr) -> sympy.Expr:
    if isinstance(value, sympy.Rational):
        bits = max(int(value.p).bit_length(), int(value.q).bit_length())
        if bits * math.log10(2) > MAX_DIGITS:
            raise MathError(f"number too large: an intermediate result has about {bits * math.log10(2):,.0f} "
                            f"digits (the limit is {MAX_DIGITS:,})")
    return value


def _power(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    # sympy computes an exact power as soon as it is built, so refuse a huge one before building it
    if isinstance(base, sympy.Rational) and isinstance(exponent, sympy.Rational) and abs(base) not in (0, 1):
        magnitude = math.log10(max(abs(int(base.p)), int(base.q)))  # digits per unit of exponent
        if abs(exponent) > 10**9 or float(abs(exponent)) * magnitude > MAX_DIGITS:
            digits = "more than 10**9" if abs(exponent) > 10**9 else f"about {float(abs(exponent)) * magnitude:,.0f}"
            shown = _short(base, 20) if isinstance(base, sympy.Integer) and base > 0 else f"({_short(base, 20)})"
            raise MathError(f"exponent too large: {shown}**{_short(exponent, 20)} would have {digits} "
                            f"digits (the limit is {MAX_DIGITS:,})")
    return base**exponent


def _log10_factorial(n: float) -> float:
    return math.lgamma(n + 1) / math.log(10)


def _call(name: str, args: list[sympy.Expr]) -> sympy.Expr:
    fn, lo, hi = FUNCTIONS[name]
    if not lo <= len(args) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise MathError(f"{name} takes {want} argument{'s' if hi > 1 else ''}, got {len(args)}")
    if name == "factorial" and isinstance(args[0], sympy.Integer) and args[0] > 0:
        n = int(args[0])
        if n > 10**6 or _log10_factorial(n) > MAX_DIGITS:
            raise MathError(f"factorial too large: factorial({_short(n, 20)}) has more than {MAX_DIGITS:,} digits")
    if name == "binomial" and all(isinstance(a, sympy.Integer) for a in args) and 0 < args[1] < args[0]:
        n, k = int(args[0]), int(args[1])
        if n > 10**15 or _log10_factorial(n) - _log10_factorial(k) - _log10_factorial(n - k) > MAX_DIGITS:
            raise MathError(f"binomial too large: binomial({_short(n, 20)}, {_short(k, 20)}) has more than "
                            f"{MAX_DIGITS:,} digits")
    return fn(*args)


def _build(node: ast.AST, top: bool = False) -> sympy.Basic:
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise MathError(f"{type(v).__name__} constants are not allowed" if not isinstance(v, complex)
                            else "complex literals are not allowed; write I for the imaginary unit")
        if isinstance(v, float) and not math.isfinite(v):
            raise MathError(f"number out of range: {v}; write oo for infinity")
        return _check_size(sympy.Integer(v) if isinstance(v, int) else sympy.Float(repr(v)))
    if isinstance(node, ast.Name):
        check_name(node.id)
        if node.id in FUNCTIONS:
            raise MathError(f"function {node.id!r} needs parentheses, e.g. {node.id}(x)")
        return CONSTANTS[node.id] if node.id in CONSTANTS else sympy.Symbol(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _build(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return _check_size(_power(_build(node.left), _build(node.right)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _build(node.left), _build(node.right)
        if isinstance(node.op, ast.Div | ast.Mod) and right == 0:
            raise MathError(f"division by zero: {_short(left, 40)} / 0")
        return _check_size(_BINOPS[type(node.op)](left, right))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise MathError("only named functions may be called, e.g. sin(x)")
        check_name(node.func.id)
        if node.func.id not in FUNCTIONS:
            raise MathError(f"{node.func.id!r} is not a function")
        if node.keywords:
            raise MathError(f"keyword arguments are not allowed (in {node.func.id}(...))")
        return _check_size(_call(node.func.id, [_build(a) for a in node.args]))
    if isinstance(node, ast.Compare):
        if not top:
            raise MathError("a comparison ('=', '<', ...) may only join the two sides of an equation")
        if len(node.ops) != 1 or type(node.ops[0]) not in _COMPARE:
            raise MathError("an equation has exactly one '=' (or one of <, <=, >, >=, !=)")
        return _COMPARE[type(node.ops[0])](_build(node.left), _build(node.comparators[0]))
    for kind, reason in _NODE_REASONS.items():
        if isinstance(node, kind):
            raise MathError(reason)
    what = type(node.op).__name__ if isinstance(node, ast.BinOp | ast.UnaryOp) else type(node).__name__
    raise MathError(f"{what} is not allowed")


def parse(text: str) -> sympy.Basic:
    """A sympy expression, or a relation for "a = b", from text under the restricted grammar."""
    if not isinstance(text, str):
        raise MathError(f"an expression must be a string, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise MathError(f"expression too long: {len(text):,} characters (the limit is {MAX_CHARS:,})")
    if not text.strip():
        raise MathError("the expression is empty")
    source = _python_text(text)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as e:
        raise MathError(f"cannot parse {_short(text)!r}: {e.msg}") from None
    except (RecursionError, MemoryError):
        raise MathError("expression nested too deeply") from None
    _check_tree(tree)
    return _build(tree.body, top=True)


# ------------------------------------------------------------------------------------------------ operations

def _symbols(variable: str | None) -> list[sympy.Symbol]:
    names = [v.strip() for v in (variable or "").split(",") if v.strip()]
    for n in names:
        check_name(n)
        if n in FUNCTIONS or n in CONSTANTS:
            raise MathError(f"variable {n!r} is a function or constant name, not a symbol")
    return [sympy.Symbol(n) for n in names]


def _variable(expr: sympy.Basic, variable: str | None, operation: str) -> sympy.Symbol:
    given = _symbols(variable)
    if len(given) > 1:
        raise MathError(f"{operation} takes one variable, got {variable!r}")
    if given:
        return given[0]
    free = sorted(expr.free_symbols, key=str)
    if len(free) == 1:
        return free[0]
    if sympy.Symbol("x") in free:
        return sympy.Symbol("x")
    if not free:
        return sympy.Symbol("x")  # a constant: its derivative is 0, its integral c*x
    raise MathError(f"the expression has several symbols ({', '.join(map(str, free))}); say which with 'variable'")


def _expression(expression: str | None, operation: str, relation: bool = False) -> sympy.Basic:
    if expression is None:
        raise MathError(f"{operation} needs 'expression'")
    expr = parse(expression)
    if isinstance(expr, sympy.core.relational.Relational) and not relation:
        raise MathError(f"{operation} takes an expression, not an equation or inequality; use solve for those")
    return expr


def _decimal(expr: sympy.Basic) -> str:
    value = expr.evalf(15)
    if isinstance(value, sympy.Float):
        return mpmath.nstr(value._to_mpmath(53), 15)  # 1024.75, not 1024.75000000000
    return str(value)


def _result(answer: str, latex: str, steps: list[str]) -> dict:
    return {"answer": answer, "latex": latex, "steps": steps}


def evaluate(expression: str | None, **_) -> dict:
    exact = _expression(expression, "evaluate")
    decimal = _decimal(exact)
    steps = [f"exact value: {exact}", f"decimal value: {decimal}"]
    if exact.free_symbols or isinstance(exact, sympy.Integer):
        return _result(str(exact), sympy.latex(exact), steps)
    if exact.atoms(sympy.Float):  # a decimal input has no exact value to show
        return _result(decimal, decimal, steps[1:])
    return _result(f"{exact} ≈ {decimal}", f"{sympy.latex(exact)} \\approx {decimal}", steps)


def simplify(expression: str | None, **_) -> dict:
    expr = _expression(expression, "simplify", relation=True)
    result = sympy.simplify(expr)
    steps = [f"input: {expr}", f"simplified: {result}" if result != expr else "already in simplest form"]
    return _result(str(result), sympy.latex(result), steps)


def expand(expression: str | None, **_) -> dict:
    expr = _expression(expression, "expand", relation=True)
    for p in expr.atoms(sympy.Pow):
        b, e = p.as_base_exp()
        if isinstance(b, sympy.Add) and isinstance(e, sympy.Integer) and abs(e) > MAX_EXPAND_POWER:
            raise MathError(f"refusing to expand ({_short(b, 30)})**{e}: exponents over {MAX_EXPAND_POWER} of a "
                            f"sum give too many terms")
    result = sympy.expand(expr)
    return _result(str(result), sympy.latex(result), [f"input: {expr}", f"expand products and powers: {result}"])


def factor(expression: str | None, **_) -> dict:
    expr = _expression(expression, "factor")
    if isinstance(expr, sympy.Integer):
        n = int(expr)
        if len(str(abs(n))) > MAX_FACTOR_DIGITS:
            raise MathError(f"integer too large to factor: {len(str(abs(n)))} digits (the limit is "
                            f"{MAX_FACTOR_DIGITS})")
        primes = sympy.factorint(n)
        if len(primes) <= 1 and all(e == 1 for e in primes.values()):
            what = "prime" if sympy.isprime(n) else "a unit or zero: it has no prime factors"
            return _result(str(n), str(n), [f"{n} is {what}"])
        result = sympy.Mul(*(sympy.Pow(p, e, evaluate=False) if e > 1 else sympy.Integer(p)
                             for p, e in primes.items()), evaluate=False)
        return _result(str(result), sympy.latex(result), [f"prime factorisation: {n} = {result}"])
    result = sympy.factor(expr)
    steps = [f"input: {expr}", f"factor: {result}" if result != expr else "no factorisation over the rationals"]
    return _result(str(result), sympy.latex(result), steps)


def _one_side(eq: sympy.Basic) -> sympy.Expr:
    return eq.lhs - eq.rhs if isinstance(eq, sympy.Eq) else eq


def _solution_text(solution: dict) -> tuple[str, str]:
    pairs = sorted(solution.items(), key=lambda kv: str(kv[0]))
    return (", ".join(f"{k} = {v}" for k, v in pairs),
            ", \\quad ".join(f"{sympy.latex(k)} = {sympy.latex(v)}" for k, v in pairs))


def solve(expression: str | None = None, variable: str | None = None, equations: list[str] | None = None,
          **_) -> dict:
    texts = list(equations or []) + ([expression] if expression is not None else [])
    if not texts:
        raise MathError("solve needs 'expression' (one equation) or 'equations' (a system)")
    if len(texts) > 10:
        raise MathError(f"at most 10 equations, got {len(texts)}")
    eqs = [parse(t) for t in texts]
    # sympy decides an equation without unknowns when it builds it: Eq(x, x + 1) is False
    if any(e is sympy.false for e in eqs):
        return _result("no solution", "\\emptyset", [f"equation {eqs.index(sympy.false) + 1} is never true"])
    if all(e is sympy.true for e in eqs):
        return _result("every value is a solution", "\\text{all values}", ["the equations are always true"])
    eqs = [e for e in eqs if e is not sympy.true]
    if any(isinstance(e, sympy.core.relational.Relational) and not isinstance(e, sympy.Eq) for e in eqs):
        if len(eqs) > 1:
            raise MathError("inequalities are solved one at a time")
        var = _variable(eqs[0], variable, "solve")
        result = sympy.solve(eqs[0], var)
        return _result(str(result), sympy.latex(result), [f"inequality: {eqs[0]}", f"solution: {result}"])
    sides = [_one_side(e) for e in eqs]
    if len(sides) == 1:
        unknowns = [_variable(sides[0], variable, "solve")]
    else:
        unknowns = _symbols(variable) or sorted(set().union(*(s.free_symbols for s in sides)), key=str)
    if not unknowns or not any(s.has(u) for s in sides for u in unknowns):
        raise MathError(f"nothing to solve for: no equation contains {', '.join(map(str, unknowns)) or 'a symbol'}")
    steps = []
    if len(sides) == 1:
        steps.append(f"move all terms to one side: {sides[0]} = 0")
        factored = sympy.factor(sides[0])
        if factored != sides[0] and isinstance(factored, sympy.Mul | sympy.Pow):
            steps.append(f"factor: {factored} = 0")
    else:
        steps.append(f"system of {len(sides)} equations in {', '.join(map(str, unknowns))}")
        steps += [f"equation {i + 1}: {s} = 0" for i, s in enumerate(sides)]
    solutions = sympy.solve(sides, unknowns, dict=True)
    if not solutions:
        steps.append("no solution")
        return _result("no solution", "\\emptyset", steps)
    texts = [_solution_text(s) for s in solutions]
    if len(sides) == 1 or len(solutions) == 1:
        answer, latex = ", ".join(t for t, _ in texts), ", \\quad ".join(t for _, t in texts)
    else:
        answer, latex = " or ".join(f"({t})" for t, _ in texts), " \\;\\text{or}\\; ".join(f"({t})" for _, t in texts)
    steps.append(f"solution{'s' if len(solutions) > 1 else ''}: {answer}")
    return _result(answer, latex, steps)


def _diff_rule(f: sympy.Expr, x: sympy.Symbol) -> str:
    d = f"d/d{x}"
    if not f.has(x):
        return f"constant rule: {d} c = 0"
    if f == x:
        return f"{d} {x} = 1"
    if isinstance(f, sympy.Add):
        return f"sum rule: differentiate each of the {len(f.args)} terms"
    if isinstance(f, sympy.Mul):
        const, rest = f.as_independent(x, as_Add=False)
        if const != 1:
            return f"constant multiple rule: {d} ({const})·u = ({const})·u' with u = {rest}"
        num, den = sympy.fraction(f)
        if den.has(x) and num != 1:
            return f"quotient rule: (u/v)' = (u'·v - u·v')/v² with u = {num}, v = {den}"
        factors = f.as_ordered_factors()
        if len(factors) == 2:
            return f"product rule: (u·v)' = u'·v + u·v' with u = {factors[0]}, v = {factors[1]}"
        return f"product rule over {len(factors)} factors: {', '.join(map(str, factors))}"
    if isinstance(f, sympy.Pow):
        b, e = f.as_base_exp()
        if not e.has(x):
            chain = "" if b == x else f", and the chain rule with u = {b}"
            return f"power rule: {d} u^n = n·u^(n-1)·u' with n = {e}{chain}"
        if not b.has(x):
            return f"exponential rule: {d} a^u = a^u·ln(a)·u' with a = {b}, u = {e}"
        return f"logarithmic differentiation: {d} u^v = u^v·(v'·ln(u) + v·u'/u) with u = {b}, v = {e}"
    if isinstance(f, sympy.Function) and len(f.args) == 1:
        name, u = type(f).__name__, f.args[0]
        if u == x:
            return f"derivative of {name}: {d} {f} = {sympy.diff(f, x)}"
        return f"chain rule: {d} {name}(u) = {name}'(u)·u' with u = {u}"
    return f"differentiate with respect to {x}"


def diff(expression: str | None, variable: str | None = None, **_) -> dict:
    f = _expression(expression, "diff")
    x = _variable(f, variable, "diff")
    result = sympy.diff(f, x)
    steps = [_diff_rule(f, x), f"derivative: {result}"]
    simpler = sympy.simplify(result)
    if simpler != result and sympy.count_ops(simpler) < sympy.count_ops(result):
        steps.append(f"simplified: {simpler}")
        result = simpler
    return _result(str(result), sympy.latex(result), steps)


_RULES = {"PartsRule": "integration by parts", "URule": "substitution", "AddRule": "linearity: integrate term "
          "by term", "ConstantTimesRule": "constant multiple: take the constant out", "PowerRule": "power rule",
          "ExpRule": "exponential rule", "ConstantRule": "constant rule", "CyclicPartsRule": "integration by parts "
          "(cyclic)", "TrigRule": "a standard trigonometric integral", "RewriteRule": "rewrite the integrand",
          "PartialFractionsRule": "partial fractions", "ReciprocalRule": "∫ 1/u du = ln|u|"}


def _integral_method(f: sympy.Expr, x: sympy.Symbol) -> str | None:
    try:
        rule = integral_steps(f, x)
    except Exception:  # the steps are commentary; integrate() itself decides the answer
        return None
    name = type(rule).__name__
    if name == "AlternativeRule" and rule.alternatives:
        rule, name = rule.alternatives[0], type(rule.alternatives[0]).__name__
    method = _RULES.get(name, name.removesuffix("Rule").lower() or None)
    if name == "PartsRule":
        method += f": u = {rule.u}, dv = ({rule.dv}) d{x}"
    elif name == "URule":
        method += f": u = {rule.u_func}"
    return f"method: {method}" if method else None


def integrate(expression: str | None, variable: str | None = None, lower: str | None = None,
              upper: str | None = None, **_) -> dict:
    f = _expression(expression, "integrate")
    x = _variable(f, variable, "integrate")
    if (lower is None) != (upper is None):
        raise MathError("a definite integral needs both 'lower' and 'upper'")
    steps = [f"integrate with respect to {x}: ∫ {f} d{x}"]
    method = _integral_method(f, x)
    if method:
        steps.append(method)
    antiderivative = sympy.integrate(f, x)
    if antiderivative.has(sympy.Integral):
        steps.append("no closed form found")
    else:
        steps.append(f"antiderivative: {antiderivative} + C")
    if lower is None:
        closed = not antiderivative.has(sympy.Integral)
        return _result(f"{antiderivative} + C" if closed else str(antiderivative),
                       sympy.latex(antiderivative) + (" + C" if closed else ""), steps)
    a, b = _expression(lower, "integrate"), _expression(upper, "integrate")
    result = sympy.integrate(f, (x, a, b))
    steps.append(f"evaluate from {x} = {a} to {x} = {b}: {result}")
    return _result(str(result), sympy.latex(result), steps)


def limit(expression: str | None, variable: str | None = None, point: str | None = None, **_) -> dict:
    f = _expression(expression, "limit")
    x = _variable(f, variable, "limit")
    if point is None or not point.strip():
        raise MathError('limit needs \'point\', e.g. "0", "oo" or "0+" (from the right)')
    point = point.strip()
    side = point[-1] if point[-1] in "+-" and len(point) > 1 else None
    p = _expression(point[:-1] if side else point, "limit")
    direction = side or ("+-" if p.is_finite else "+")  # two-sided at a finite point, as in a textbook
    where = f"{x} → {p}{side or ''}"
    substituted = f.subs(x, p)
    if substituted.has(sympy.nan, sympy.zoo) or not substituted.is_finite:
        steps = [f"direct substitution gives an indeterminate or infinite form ({substituted})"]
    else:
        steps = [f"direct substitution: {substituted}"]
    result = sympy.limit(f, x, p, dir=direction)
    steps.append(f"limit as {where}: {result}")
    return _result(str(result), sympy.latex(result), steps)


_OPERATIONS = MappingProxyType({"evaluate": evaluate, "simplify": simplify, "expand": expand, "factor": factor,
                                "solve": solve, "diff": diff, "integrate": integrate, "limit": limit})


def run(operation: str, expression: str | None = None, variable: str | None = None, point: str | None = None,
        equations: list[str] | None = None, lower: str | None = None, upper: str | None = None) -> dict:
    """The plugin's entry: {"answer": str, "latex": str, "steps": [str, ...]}, or MathError."""
    if operation not in _OPERATIONS:
        raise MathError(f"unknown operation {operation!r}; expected one of {', '.join(OPERATIONS)}")
    try:
        return _OPERATIONS[operation](expression=expression, variable=variable, point=point, equations=equations,
                                      lower=lower, upper=upper)
    except MathError:
        raise
    except ValueError as e:
        if "integer string conversion" in str(e):
            raise MathError(f"the result has more than {MAX_DIGITS:,} digits") from None
        raise MathError(f"{operation} failed: {e}") from None
    except (TypeError, NotImplementedError, ArithmeticError, AttributeError) as e:
        raise MathError(f"{operation} failed: {type(e).__name__}: {e}") from None


_TEXT = {"type": "string", "maxLength": MAX_CHARS}
plugin = Plugin(
    name="math",
    # kept short: the whole definition goes into the prompt of every request that offers the tool
    description=("Exact symbolic math (sympy): evaluate, simplify, expand, factor, solve (an equation 'a = b', "
                 "an inequality, or a system as 'equations'), diff, integrate, limit. Powers as ^. Returns the "
                 "answer and the steps."),
    parameters={
        "type": "object",
        "properties": {
            "operation": {"type": "string", "enum": list(OPERATIONS)},
            "expression": {**_TEXT, "description": "e.g. 2^10 + 3/4 or x^2 - 5x + 6 = 0"},
            "variable": {"type": "string", "maxLength": 40},
            "point": {"type": "string", "maxLength": 200, "description": "limit: e.g. 0, oo, 0+"},
            "equations": {"type": "array", "items": _TEXT, "minItems": 1, "maxItems": 10},
            "lower": {**_TEXT, "description": "definite integral"},
            "upper": {**_TEXT, "description": "definite integral"},
        },
        "required": ["operation"],
        "additionalProperties": False,
    },
    run=run,
)
