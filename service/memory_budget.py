"""A model's memory budget at load: the build first runs in a child process
that cannot take more.

What a graph costs once ONNX Runtime holds it cannot be told from its bytes
alone: service/model_limits.py counts the constants it can see (sparse
tensors, ``ConstantOfShape``, ``Expand``, ``Tile``), but constant folding
computes any node whose inputs are constants (an ``Add`` of a ``(N, 1)``
and a ``(1, N)`` initializer is ``N * N`` floats from ``2 * N`` stored; up
to 1 GiB an output, past which the warm-up computes it), and a session
allocates as it plans and warms up. Nor can it be measured in
the server's own process: resident memory is the process's, shared by every
request and by loads running at once, and a measurement comes only after
the memory is taken, when a bomb has already eaten the machine.

So with a limit set (``BNFOLD_MODEL_MEMORY_LIMIT``), :func:`trial` hands the
graph's bytes, exactly those the server will load, to a fresh child
process (forked by a helper, the forker, that has imported the build once:
a new interpreter a trial would cost seconds; it is started before the
first load and leaves after ``FORKER_IDLE_S`` unused, and every process
dies with its parent), which builds the version as the server would
(``loading.build_version``: session, fold on load, warm-up) under
``RLIMIT_AS`` set to its own address space plus the limit: an allocation
past it fails in the child (``bad_alloc``, ``MemoryError``) or ends it (an
abort), and the machine never gives the bomb more than the limit. The child
also reports its peak resident memory over what it held before the build
(``VmHWM`` after resetting it, ``/proc/self/clear_refs``); a build that
peaked over the limit is refused too. Only a build that fits is then done
again in the server, which is what it costs: one extra build per load,
and the forker's memory (80 MB resident, measured) while loads happen.

The child builds on the CPU, with one thread: the budget is host memory
(device memory is ONNX Runtime's own ``gpu_mem_limit``), and the trial
must not take the cores that serve requests. A build that fails in the
child for any reason other than memory is not refused here: the server's
own build gives its reason (and may succeed where the CPU could not, an
fp16 graph on CUDA). The load timeout stops the child too (its ``stop``
flag, the warm-up's).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loading import BuildPlan

log = logging.getLogger("bnfold.service")

SETTING = "BNFOLD_MODEL_MEMORY_LIMIT"
# What an allocation that failed says, in ONNX Runtime's and Python's words.
OUT_OF_MEMORY = (
    "bad_alloc",
    "bad allocation",
    "failed to allocate",
    "cannot allocate",
    "out of memory",
    "memoryerror",
)
FORKER = "from bnfold.service.memory_budget import forker_main; forker_main()"
FORKER_IDLE_S = 60.0  # the forker exits after this long without a trial (started again on demand)
POLL_S = 0.05  # how often a waiting trial looks at its stop flag
LINUX = sys.platform.startswith("linux") and hasattr(os, "pidfd_open")
_PR_SET_PDEATHSIG = 1
_HEAD = struct.Struct("<QQ")  # bytes of the pickled request, bytes of the graph
_PID = struct.Struct("<q")
READY = b"R"  # the forker has imported the build


def over_budget(limit: int, detail: str) -> ValueError:
    return ValueError(
        f"loading takes more than the {limit}-byte model memory limit ({SETTING}): {detail}; "
        "refused"
    )


class _Forker:
    """The helper process that forks the trials: started on demand with
    every import the build needs done once (a fresh interpreter per trial
    costs seconds), gone after ``FORKER_IDLE_S`` unused. It runs nothing but
    its fork loop, so forking it is safe: numpy's BLAS is held to one
    thread, and the threads ONNX Runtime's import starts wait idle, holding
    no lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def fork(self, request: bytes, source: bytes) -> int:
        """The pid of a child building ``request`` (a pickled
        ``(plan, limit, out, err)``) from ``source``."""
        with self._lock:
            for _ in (1, 2):  # a forker that just went idle is started again
                proc = self._running()
                try:
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write(_HEAD.pack(len(request), len(source)) + request)
                    proc.stdin.write(memoryview(source))  # no copy of a large graph
                    proc.stdin.flush()
                    raw = proc.stdout.read(_PID.size)
                except (BrokenPipeError, ValueError):
                    raw = b""
                if len(raw) == _PID.size:
                    return int(_PID.unpack(raw)[0])
                proc.kill()
                proc.wait()
                self._proc = None
            raise OSError("the trial load's helper process did not start")

    def prepare(self) -> None:
        """Start the forker now (its imports take seconds) unless it runs."""
        with self._lock:
            self._running()

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()
            assert self._proc.stdout is not None
            if self._proc.stdout.read(1) != READY:  # it imported everything, or failed to
                self._proc.kill()
                self._proc.wait()
                self._proc = None
                raise OSError("the trial load's helper process did not start")
        return self._proc

    @staticmethod
    def _start() -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "MALLOC_ARENA_MAX": "2",  # fewer malloc arenas reserving address space
            "OPENBLAS_NUM_THREADS": "1",  # no thread besides the one that forks
            "OMP_NUM_THREADS": "1",
        }
        return subprocess.Popen(
            [sys.executable, "-c", FORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )


_forker = _Forker()


def prepare() -> None:
    """Start the process that forks trial loads before the first of them
    (so that its start counts against no model's load timeout);
    ``OSError`` when it cannot start."""
    _forker.prepare()


def trial(source: bytes, plan: BuildPlan, limit: int, *, stop: Any = None) -> int:
    """Build ``plan`` from ``source`` in a child process held to ``limit``
    bytes; returns its peak (bytes over what it held before), or raises
    ``ValueError`` (the reason in the index) when the build needs more.
    ``stop`` (ONNX Runtime's ``RunOptions``): its ``terminate`` flag kills
    the child. Linux only (``/proc``, pidfds): elsewhere there is no trial
    (0)."""
    if not LINUX:
        return 0
    options = replace(plan.options, device="cpu", intra_op_threads=1, inter_op_threads=1)
    with tempfile.TemporaryDirectory(prefix="bnfold-trial-") as folder:
        out, err = os.path.join(folder, "report.json"), os.path.join(folder, "stderr")
        request = pickle.dumps((replace(plan, options=options), limit, out, err))
        pid = _forker.fork(request, source)
        _wait(pid, stop)
        report = _report(out)
        if report is None:
            raise over_budget(limit, f"its trial load ended abnormally{_last_line(err)}")
    if not report["ok"]:
        if report["memory"]:
            raise over_budget(limit, f"its trial load failed: {report['error']}")
        return int(report["peak"])  # not memory: the server's own build gives the reason
    peak = int(report["peak"])
    if peak > limit:
        raise over_budget(limit, f"its trial load peaked at {peak} bytes")
    log.info(
        "%s: its trial load peaked at %d MiB (limit %d MiB)", plan.label, peak >> 20, limit >> 20
    )
    return peak


def _wait(pid: int, stop: Any) -> None:
    """Until the child ``pid`` (the forker's, reaped by the kernel) has
    ended; killed when ``stop.terminate`` is set, or when this thread is
    interrupted."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already over
    try:
        # The flag is read before each wait, so that one set before the
        # child ends (or before it began) stops the load whatever the
        # child's own outcome was.
        while True:
            if stop is not None and stop.terminate:
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                select.select([pidfd], [], [])
                raise ValueError("loading stopped")
            if select.select([pidfd], [], [], POLL_S)[0]:
                break
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        raise
    finally:
        os.close(pidfd)


def _report(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            report = json.loads(f.read(1 << 16))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _last_line(path: str) -> str:
    """``: <the child's last line on stderr>``, or nothing."""
    try:
        with open(path, "rb") as f:
            f.seek(max(os.fstat(f.fileno()).st_size - 4096, 0))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f": {last}" if last else ""


# --- the helper processes ------------------------------------------------------


def _status(field: str) -> int:
    """A ``kB`` field of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


def _read(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the trial load's input ended early")
    return data


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the forker ends (a server exiting mid-load must leave no
    build running on)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it ended before prctl
        os._exit(1)


def forker_main() -> None:
    """Import the build once, then for each request on stdin fork a child
    that builds it, and write the child's pid to stdout. It ends when its
    stdin does (the server gone, however it ended), or after
    ``FORKER_IDLE_S`` without a request; its children die with it. (Not
    ``PR_SET_PDEATHSIG``: that follows the thread that started it, a load's
    thread, which ends while other loads still use it.)"""
    from .loading import build_version  # noqa: F401  every import before the first fork

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reaped by the kernel
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(READY)
    stdout.flush()
    while select.select([stdin], [], [], FORKER_IDLE_S)[0]:
        try:
            request_size, source_size = _HEAD.unpack(_read(stdin, _HEAD.size))
            request = _read(stdin, request_size)
            source = _read(stdin, source_size)
        except EOFError:
            break
        forker = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                _child(forker, request, source)
            finally:
                os._exit(0)
        del request, source
        stdout.write(_PID.pack(pid))
        stdout.flush()
    os._exit(0)


def _child(forker: int, request: bytes, source: bytes) -> None:
    """Build under the limit; write ``{"ok", "memory", "error", "peak"}``
    as JSON to the request's report file."""
    from .errors import first_line
    from .loading import build_version

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _die_with_parent(forker)
    plan, limit, out, err = pickle.loads(request)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    errors = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(errors, 2)  # ONNX Runtime's words on an abort, for the reason
    baseline = _status("VmRSS")
    try:  # the peak from here on (Linux 4.0+); else the forker's own peak stays in it
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _status("VmSize") + limit
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard < 0 else min(cap, hard), hard))
    report: dict[str, Any]
    try:
        build_version(source, plan)
        report = {"ok": True, "memory": False, "error": ""}
    except BaseException as e:  # reported, whatever it is
        text = first_line(e) or type(e).__name__
        memory = isinstance(e, MemoryError) or any(w in text.lower() for w in OUT_OF_MEMORY)
        report = {"ok": False, "memory": memory, "error": text[:2000]}
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    report["peak"] = max(_status("VmHWM") - baseline, 0)
    with open(out, "w") as f:
        f.write(json.dumps(report))
    os._exit(0)  # freeing a large session costs time and tells nothing
