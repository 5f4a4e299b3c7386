"""The built-in tools' sandboxes: arithmetic only, limits end runaway code with a clear result."""

import time

import pytest

from llmlab.errors import InputError
from llmlab.infer.sandbox import calculator, python


@pytest.mark.parametrize("expression, value", [
    ("2 + 3 * 4", "14"), ("(2 + 3) * 4", "20"), ("-7 // 2", "-4"), ("17 % 5", "2"), ("2 ** 10", "1024"),
    ("1 / 4", "0.25"), ("sqrt(16)", "4"), ("3^2", "9"), ("12 × 3", "36"), ("123456789 * 987654321", str(123456789 * 987654321)),
])
def test_calculator_evaluates_arithmetic(expression, value):
    assert calculator(expression) == value


@pytest.mark.parametrize("expression", [
    "__import__('os').system('ls')", "open('/etc/passwd')", "x + 1", "[1, 2]", "(1).__class__", "2 if 1 else 3",
    "1 / 0", "", "2 +", "'a' * 3",
])
def test_calculator_refuses_anything_but_arithmetic(expression):
    with pytest.raises(InputError):
        calculator(expression)


@pytest.mark.parametrize("expression", ["9**9**9", "10**100000", "(10**999) * (10**999)", "2 ** 5000"])
def test_calculator_refuses_huge_results_fast(expression):
    start = time.perf_counter()
    with pytest.raises(InputError):
        calculator(expression)
    assert time.perf_counter() - start < 0.5


def test_python_runs_ordinary_code():
    r = python("import math\nprint(sum(i * i for i in range(10)), math.factorial(5))")
    assert (r.stdout, r.exit_code, r.timed_out) == ("285 120\n", 0, False)
    assert r.text() == "285 120"


def test_python_reports_exceptions_as_text():
    r = python("raise ValueError('nope')")
    assert r.exit_code == 1 and "ValueError: nope" in r.text()


def test_python_endless_loop_hits_the_wall_clock_limit():
    start = time.perf_counter()
    r = python("while True: pass", timeout_s=1.0, cpu_seconds=10)
    assert r.timed_out and r.exit_code is None and "timed out" in r.text()
    assert time.perf_counter() - start < 5


def test_python_cpu_limit_kills_a_busy_process():
    r = python("while True: pass", timeout_s=20, cpu_seconds=1)
    assert not r.timed_out and r.exit_code != 0


def test_python_memory_limit_stops_a_huge_allocation():
    r = python("x = bytearray(2 * 1024**3)\nprint('allocated')", memory_mb=200)
    assert r.exit_code != 0 and "MemoryError" in r.stderr and "allocated" not in r.stdout


@pytest.mark.parametrize("code", [
    "import socket\nsocket.socket()",
    "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9')",
])
def test_python_has_no_network(code):
    r = python(code)
    assert r.exit_code != 0 and "sandbox does not allow socket" in r.stderr


@pytest.mark.parametrize("code", [
    "open('out.txt', 'w').write('x')", "import os\nos.open('x', os.O_WRONLY | os.O_CREAT)",
    "import pathlib\npathlib.Path('/tmp/llmlab-sandbox-escape').write_text('x')",
    "import os\nos.remove('/tmp/anything')", "import subprocess\nsubprocess.run(['ls'])", "import os\nos.system('ls')",
])
def test_python_cannot_write_files_or_start_processes(code, tmp_path):
    r = python(code)
    assert r.exit_code != 0 and "sandbox does not allow" in r.stderr


def test_python_starts_in_an_empty_directory_with_an_empty_environment():
    r = python("import os\nprint(os.listdir('.'), {k: v for k, v in os.environ.items() if k != 'LC_CTYPE'})")
    assert r.stdout.strip() == "[] {}"
