"""A one-machine Ray cluster in processes of its own, as `ray start --head` makes one, so the Ray
executor can be run against a cluster address (`llmlab clean --ray-address`) without a second machine:
the slow test and `benchmarks/clean.py --executor ray --ray-head` use it.

Every port is chosen free on 127.0.0.1 and the session files go to a fresh folder, so the node does not
collide with another Ray on the same machine; it is stopped by signalling its own process group (never
`ray stop`, which stops every Ray of the user on the machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from llmlab.data.clean.ray_executor import require_ray, worker_pythonpath
from llmlab.errors import LlmlabError

PORT_OPTIONS = (
    "--port", "--node-manager-port", "--object-manager-port",
    "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port",
)


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 just now (held open together, so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


@contextlib.contextmanager
def ray_head_node(num_cpus: int, timeout: float = 120.0) -> Iterator[str]:
    """Start a Ray head node with `num_cpus` CPUs on 127.0.0.1 and yield its address (`127.0.0.1:PORT`);
    stop it on exit, whatever happened. Its workers import the same llmlab as this process."""
    require_ray()
    folder = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit in 107 bytes
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS))))
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               "--node-ip-address", "127.0.0.1", f"--num-cpus={num_cpus}", "--include-dashboard=false",
               "--disable-usage-stats", "--temp-dir", str(folder)]
    command += [str(part) for option, port in ports.items() for part in (option, port)]
    # A throwaway cluster for this machine's own use: no token authentication (Ray 2.60's `ray start`
    # turns it on, and a driver then needs RAY_AUTH_MODE=token and the token).
    env = os.environ | {"PYTHONPATH": worker_pythonpath(), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    log = folder / "ray-start.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while b"Ray runtime started" not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise LlmlabError(f"the Ray head node did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{ports['--port']}"
    finally:
        _stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block` (it stops the processes it started), then SIGKILL to whatever is
    left of its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
