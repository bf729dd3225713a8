"""`modelport serve --workers N`: N server processes on one port.

Python serves gRPC from one core per process, so throughput on a many-core node comes from
processes. Each worker is a fresh interpreter (spawn, so no gRPC state crosses a fork) with its
own sessions; the kernel spreads connections over them with SO_REUSEPORT. The supervisor binds
the port first, which also turns port 0 into one concrete port every worker shares.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import time

from .settings import ServerSettings

log = logging.getLogger("modelport.server.workers")
RESTART_BACKOFF_S = 1.0


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket that holds the port for the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    return sock


def _worker_main(settings: ServerSettings, index: int) -> None:
    from .logs import configure

    configure(settings.log_level, settings.log_format, prefix=f"worker-{index} ")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor turns Ctrl-C into SIGTERM
    from .app import run

    if settings.metrics_port:  # one /metrics per worker: port, port + 1, ...
        settings = settings.model_copy(update={"metrics_port": settings.metrics_port + index})
    from .loop import run as run_loop

    run_loop(run(settings), settings.event_loop)


def supervise(settings: ServerSettings) -> int:
    """Start the workers, restart any that dies, forward SIGTERM/SIGINT, wait for them to drain."""
    holder = reserve_port(settings.host, settings.grpc_port)
    port = holder.getsockname()[1]
    update = {"grpc_port": port}
    http_holder = None
    if settings.allow_http:  # the HTTP port is shared the same way
        http_holder = reserve_port(settings.host, settings.http_port)
        update["http_port"] = http_holder.getsockname()[1]
    worker_settings = settings.model_copy(update=update)
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start(index: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker_main, args=(worker_settings, index), name=f"modelport-worker-{index}")
        process.start()
        return process

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        log.info("supervisor: %s, draining %d workers", signal.Signals(signum).name, settings.workers)
        for process in workers:
            if process.is_alive():
                process.terminate()  # SIGTERM: each worker drains its in-flight requests

    workers = [start(i) for i in range(settings.workers)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("supervisor: %d workers on %s:%d", settings.workers, settings.host, port)
    while not stopping:
        time.sleep(0.2)
        for i, process in enumerate(workers):
            if not process.is_alive() and not stopping:
                log.error("worker-%d exited with code %s; restarting", i, process.exitcode)
                time.sleep(RESTART_BACKOFF_S)
                workers[i] = start(i)
    deadline = time.monotonic() + settings.shutdown_grace_seconds + 5
    for process in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
    holder.close()
    if http_holder is not None:
        http_holder.close()
    # A worker that the SIGTERM met before its interpreter had set up its handlers died by it
    # (-SIGTERM) while serving nothing yet: for a stop, that is a clean exit.
    codes = [0 if p.exitcode == -signal.SIGTERM else p.exitcode for p in workers]
    log.info("supervisor: workers exited with %s", codes)
    return 0 if all(c == 0 for c in codes) else 1
