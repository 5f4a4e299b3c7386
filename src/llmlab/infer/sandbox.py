"""The built-in tools' sandboxes: an arithmetic evaluator and a restricted Python subprocess.

`calculator` never runs code: it walks Python's `ast` of the expression and allows only numbers, the
arithmetic operators, parentheses and a few `math` functions, with limits on exponents and on the size
of results, so `9**9**9` is refused at once instead of running for hours.

`python` runs code in a fresh `python -I -S` subprocess (isolated mode: no user site, no PYTHON*
variables, no current directory on the path) with an empty environment, in an empty temporary working
directory that is deleted afterwards, under `setrlimit` limits on CPU seconds, address space, file size
and process count, and a wall-clock timeout. An audit hook installed before the code runs refuses
sockets, subprocesses, `open` for writing and file deletion/renaming.

What it does not protect against: audit hooks are a tripwire, not a security boundary. Code can still
read any file the server's user can read, and a determined attacker can escape through ctypes or
interpreter internals. Run untrusted code behind an OS sandbox (a container, seccomp, a separate user);
this one keeps an honest model's mistakes (endless loops, huge allocations, stray writes) contained.
"""

from __future__ import annotations

import ast
import math
import operator
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from llmlab.errors import InputError

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000
MAX_INT_DIGITS = 1000
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"sqrt": math.sqrt, "log": math.log, "log10": math.log10, "exp": math.exp, "sin": math.sin,
              "cos": math.cos, "tan": math.tan, "abs": abs, "round": round, "floor": math.floor, "ceil": math.ceil}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def _check_size(value: int | float) -> int | float:
    if isinstance(value, int) and abs(value) >= 10**MAX_INT_DIGITS:
        raise InputError(f"the result has more than {MAX_INT_DIGITS} digits")
    return value


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check_size(node.value)
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise InputError(f"exponent {right} is larger than {MAX_EXPONENT}")
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int) \
                and len(str(abs(left))) + len(str(abs(right))) > MAX_INT_DIGITS + 1:
            raise InputError(f"the result has more than {MAX_INT_DIGITS} digits")
        return _check_size(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS \
            and not node.keywords:
        return _check_size(_FUNCTIONS[node.func.id](*(_evaluate(a) for a in node.args)))
    raise InputError(f"'{ast.unparse(node)}' is not arithmetic the calculator evaluates "
                     f"(numbers, + - * / // % **, parentheses, {', '.join(_FUNCTIONS)})")


def calculator(expression: str) -> str:
    """The value of an arithmetic expression as text ("12" or "0.5"); InputError for anything else."""
    if not isinstance(expression, str) or not expression.strip():
        raise InputError("the calculator needs an expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise InputError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    expression = expression.replace("^", "**").replace("×", "*").replace("÷", "/")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise InputError(f"'{expression}' is not an arithmetic expression ({e.msg})") from None
    try:
        value = _evaluate(tree)
    except (ZeroDivisionError, OverflowError, ValueError, TypeError) as e:
        raise InputError(f"'{expression}' cannot be evaluated: {e}") from None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return str(value)


@dataclass
class PythonResult:
    stdout: str
    stderr: str
    exit_code: int | None  # None when the wall-clock timeout killed it
    timed_out: bool = False

    def text(self) -> str:
        """What a model reads back: the output, and why it failed if it did."""
        parts = [self.stdout.rstrip()] if self.stdout.strip() else []
        if self.timed_out:
            parts.append("error: timed out")
        elif self.exit_code:
            parts.append(f"error (exit {self.exit_code}): {self.stderr.strip()[-1000:] or 'killed'}")
        return "\n".join(parts) or "(no output)"


# Runs in the child before the user's code: refuse network, processes and writes through audit events.
_GUARD = r"""
import sys
def _guard(event, args):
    if event.startswith(("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
                         "os.system", "pty.", "os.remove", "os.rename", "os.rmdir", "os.mkdir", "shutil.",
                         "os.truncate", "os.chmod", "os.chown", "os.symlink", "os.link", "os.kill")):
        raise PermissionError(f"the sandbox does not allow {event}")
    if event == "open":
        mode = args[1] if len(args) > 1 else "r"
        flags = args[2] if len(args) > 2 else 0
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & 3):
            raise PermissionError("the sandbox does not allow writing files")
sys.addaudithook(_guard)
del _guard
code = sys.stdin.read()
exec(compile(code, "<tool>", "exec"), {"__name__": "__main__"})
"""


def _limits(cpu_seconds: int, memory_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        if os.getuid() != 0:  # root ignores RLIMIT_NPROC; the audit hook still refuses fork and exec
            resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def python(code: str, timeout_s: float = 5.0, cpu_seconds: int = 5, memory_mb: int = 256,
           max_output_chars: int = 10_000) -> PythonResult:
    """Run `code` in a restricted subprocess (see the module docstring) and return what it printed."""
    if not isinstance(code, str) or not code.strip():
        raise InputError("the python tool needs code to run")
    with tempfile.TemporaryDirectory(prefix="llmlab-sandbox-") as workdir:
        try:
            done = subprocess.run([sys.executable, "-I", "-S", "-c", _GUARD], input=code, capture_output=True,
                                  text=True, cwd=workdir, env={}, timeout=timeout_s,
                                  preexec_fn=_limits(cpu_seconds, memory_mb * 2**20))
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            return PythonResult(out[:max_output_chars], "", None, timed_out=True)
    return PythonResult(done.stdout[:max_output_chars], done.stderr[-max_output_chars:], done.returncode)
