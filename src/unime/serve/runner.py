"""Run the app: on uvicorn (one process, graceful SIGTERM drain) or as a Ray Serve deployment."""

from __future__ import annotations

import contextlib
import logging

from unime.errors import ServeAddressUnavailable, ServeAppInUse, require_extra
from unime.serve.config import ServeConfig

log = logging.getLogger(__name__)


GIL_SWITCH_INTERVAL_S = 0.0005

# the Ray Serve application `unime serve --ray` deploys (on route prefix "/")
APP_NAME = "unime"


# what the app and its server import (the `serve` extra)
SERVE_MODULES = ("fastapi", "uvicorn", "pydantic", "prometheus_client")


def build_app(config: ServeConfig):
    import sys

    require_extra("serve", "unime serve", *SERVE_MODULES)

    from unime.serve.app import create_app
    from unime.serve.engine import Engine

    config.check()
    # The model thread runs Python-heavy forward code; the event loop thread gives the GIL up at every
    # socket call and then waits a whole switch interval (5 ms by default) to get it back: with many
    # connections that convoy dominates latency. A shorter interval keeps the loop responsive.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    return create_app(Engine.load(config), config)


def bind_address(host: str, port: int):
    """A socket bound to `host`:`port` (not listening yet), as uvicorn binds one (SO_REUSEADDR; IPv6 for a host with
    a colon); `ServeAddressUnavailable` naming them and the system's reason if it cannot be bound."""
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        why = getattr(e, "strerror", None) or str(e)
        raise ServeAddressUnavailable(f"serve: --host {host} --port {port}: cannot listen there ({why}); stop what "
                                      "uses it or give another --port / --host") from None
    sock.set_inheritable(True)
    return sock


def run_uvicorn(config: ServeConfig, *, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM. On SIGTERM uvicorn stops accepting connections (its port closed: a new one is
    refused; idle keep-alive connections are closed) and lets in-flight requests finish (up to `graceful_timeout_s`;
    then, or at a second signal, `_cut_requests`, each is answered 503) before the app's shutdown drains the batcher.
    The address is bound before the models load (minutes with a real model): a port in use is told at once."""
    import signal

    require_extra("serve", "unime serve", *SERVE_MODULES)
    sock = bind_address(config.host, config.port)
    try:
        app = build_app(config)
        import uvicorn

        class Server(uvicorn.Server):
            async def startup(self, sockets=None) -> None:
                await super().startup(sockets=sockets)
                if self.started:  # (uvicorn says where it listens only on the sockets it binds itself)
                    logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s (Press CTRL+C to quit)",
                                                            f"[{config.host}]:{config.port}" if ":" in config.host
                                                            else f"{config.host}:{config.port}")

            async def shutdown(self, sockets=None) -> None:
                app.state.shutting_down = True  # requests cancelled from here on are answered 503 (`app.Observe`)
                await super().shutdown(sockets=sockets)
                if self.force_exit:  # (`_quiet_lifespan_cancel`)
                    self.lifespan.logger = _quiet_lifespan_cancel(self.lifespan.logger)
                    await _cut_requests(self.server_state.tasks)

            def handle_exit(self, sig, frame) -> None:
                # uvicorn forces the exit on a second Ctrl-C only: a second SIGTERM was ignored and the drain ran on
                # (QA). A second signal of either kind cuts the requests still running (503) and ends the process
                if self.should_exit and sig == signal.SIGTERM:
                    self.force_exit = True
                super().handle_exit(sig, frame)
                if self.force_exit and app.state.forced_by is None:  # what the log says cut the requests (`Observe`)
                    app.state.forced_by = "Ctrl-C (SIGINT)" if sig == signal.SIGINT else signal.Signals(sig).name

            @contextlib.contextmanager
            def capture_signals(self):
                # uvicorn re-raises the SIGTERM / SIGINT it stopped on once it has drained: the process then died of
                # SIGTERM (-15, 143) or, on Ctrl-C, ended "interrupted" (130). A stop that drained cleanly is a
                # normal end, exit 0 (QA); a second signal (uvicorn's forced exit, requests cut) and a crash are not
                with super().capture_signals():
                    yield
                    if not self.force_exit:
                        getattr(self, "_captured_signals", []).clear()

        server = Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level.lower(),
                                       timeout_graceful_shutdown=config.graceful_timeout_s,
                                       proxy_headers=False, server_header=False, access_log=False))
        server.run(sockets=[sock])
    finally:
        sock.close()


# seconds a forced exit waits for the requests it cuts to send their 503s (`_cut_requests`)
CUT_REQUESTS_WAIT_S = 5.0


async def _cut_requests(tasks) -> None:
    """Cancel the requests still running (uvicorn's request tasks, `tasks`) as a forced exit ends the drain, and wait
    (up to `CUT_REQUESTS_WAIT_S`) until each has been answered its 503 (`app.Observe`). uvicorn leaves them running
    when a second signal forces the exit: a second Ctrl-C's KeyboardInterrupt then cancels them as the event loop
    closes, and they are answered; a second SIGTERM, re-raised by uvicorn at its default action, ended the process
    first, each request's connection closed without a response (QA)."""
    import asyncio

    running = [t for t in list(tasks) if not t.done()]
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running, timeout=CUT_REQUESTS_WAIT_S)


class _NotTheCancel(logging.Filter):
    """Drops a record of a CancelledError: raised (its exc_info), or told by the traceback its message ends with
    (Starlette's `lifespan.shutdown.failed` message, which uvicorn logs as it is)."""

    def filter(self, record: logging.LogRecord) -> bool:
        import asyncio

        if record.exc_info:
            return not isinstance(record.exc_info[1], asyncio.CancelledError)
        last = str(record.msg).rstrip().rsplit("\n", 1)[-1]
        return not last.startswith(("asyncio.exceptions.CancelledError", "CancelledError"))


def _quiet_lifespan_cancel(logger: logging.Logger) -> logging.Logger:
    """`logger` (uvicorn's lifespan's) without the record of its task's cancellation: on a forced exit (a second
    Ctrl-C) uvicorn skips the app's shutdown, and its lifespan task, left waiting for it, is cancelled as the event
    loop closes; Starlette then reported a failed shutdown, which uvicorn logged as an ERROR with the traceback of a
    KeyboardInterrupt and a CancelledError (QA; the exit, 130, and the 503s were right). No code of the app's runs
    there (its shutdown never starts); any other error of the lifespan is still logged, where it was."""
    quiet = logger.getChild("forced_exit")  # its records reach the handlers `logger`'s reach
    if not any(isinstance(f, _NotTheCancel) for f in quiet.filters):
        quiet.addFilter(_NotTheCancel())
    return quiet


def replica_placement(config: ServeConfig, *, num_cpus: float, num_gpus: float) -> ServeConfig:
    """The config each Ray Serve replica runs with, fitted to what Ray reserves for it
    (`ray_actor_options` = {"num_cpus": num_cpus, "num_gpus": num_gpus}):

    - torch intra-op threads = `config.threads` if given, else floor(num_cpus) (at least 1), set
      explicitly in the replica: otherwise it follows whatever OMP_NUM_THREADS the environment has (or
      every core when torch is loaded before Ray sets it) and N replicas on a node oversubscribe its cores;
    - device: with num_gpus > 0, Ray sets CUDA_VISIBLE_DEVICES to the replica's own GPU(s), so the
      replica uses `cuda` (= its first reserved GPU; `cuda:i` only for i < the GPUs it reserves);
      with num_gpus = 0 it uses the CPU: a replica never takes a GPU it did not reserve (Ray leaves
      CUDA_VISIBLE_DEVICES alone then, and "cuda if present" would put every replica on GPU 0)."""
    import dataclasses
    import math

    if num_cpus < 0 or num_gpus < 0:
        raise ValueError("--ray-cpus-per-replica and --ray-gpus-per-replica must be >= 0")
    device = config.device
    if num_gpus > 0:
        if device is None:
            device = "cuda"
        elif not device.startswith("cuda"):
            raise ValueError(f"--device {device} with --ray-gpus-per-replica {num_gpus:g}: a replica would reserve "
                             "GPUs it does not use; give --device cuda or --ray-gpus-per-replica 0")
        elif ":" in device and int(device.split(":", 1)[1]) >= math.ceil(num_gpus):
            raise ValueError(f"--device {device}: each replica sees only the {math.ceil(num_gpus)} GPU(s) Ray "
                             f"reserves for it (--ray-gpus-per-replica {num_gpus:g}), numbered from cuda:0")
    else:
        if device is None:
            device = "cpu"
        elif device != "cpu":
            raise ValueError(f"--device {device} with --ray-gpus-per-replica 0: Ray reserves no GPU for the replicas; "
                             "give --ray-gpus-per-replica (e.g. 1) to run them on GPUs")
    threads = config.threads or max(1, math.floor(num_cpus))
    return dataclasses.replace(config, device=device, threads=threads)


def run_ray(config: ServeConfig, *, replicas: int = 1, min_replicas: int | None = None,
            max_replicas: int | None = None, address: str | None = None, num_cpus: float = 1.0,
            num_gpus: float = 0.0, blocking: bool = True):
    """The same app as a Ray Serve deployment: `replicas` copies (or autoscaling between `min_replicas`
    and `max_replicas`), each loading its own models and batching its own requests. Returns the
    handle when not `blocking` (tests)."""
    require_extra("ray", "unime serve --ray", "ray", "ray.serve")
    require_extra("serve", "unime serve", *SERVE_MODULES)
    import ray
    from ray import serve

    config.check()
    config = replica_placement(config, num_cpus=num_cpus, num_gpus=num_gpus)
    initialized_here = not ray.is_initialized()
    if initialized_here:
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        where = ray.get_runtime_context().gcs_address
        # Serve already running on the cluster (the user's own applications): nothing of it is ours but our app
        details = _serve_details()
        if details is not None:
            conflict = serve_conflict(details)
            if conflict:
                raise ServeAppInUse(f"serve --ray: {conflict} on the Ray cluster at {where}; unime does not "
                                    "replace an application it did not deploy")
            host, port = serve_http(details)
            if (host, port) != (config.host, config.port):
                log.warning("Ray Serve already runs on the Ray cluster at %s with HTTP on %s:%d: unime's app is "
                            "served there; --host %s --port %d do not apply", where, host, port, config.host,
                            config.port)
        else:
            serve.start(http_options={"host": config.host, "port": config.port})
            host, port = config.host, config.port
    except BaseException:
        if initialized_here:
            ray.shutdown()
        raise
    started_serve = details is None

    def builder():
        return build_app(config)

    options: dict = {"ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
                     "max_ongoing_requests": max(64, 4 * config.max_batch_size)}
    if min_replicas is not None or max_replicas is not None:
        options["autoscaling_config"] = {"min_replicas": min_replicas or 1,
                                         "max_replicas": max_replicas or max(replicas, min_replicas or 1),
                                         "target_ongoing_requests": config.max_batch_size}
    else:
        options["num_replicas"] = replicas
    deployment = serve.deployment(serve.ingress(builder)(), name=APP_NAME, **options)

    def stop_serving():
        """Remove what this process added: Serve itself if it started it, else only its app; then leave Ray (stops
        the local cluster `ray.init` started, disconnects from one it connected to)."""
        try:
            if started_serve:
                serve.shutdown()  # Ray Serve drains its replicas' in-flight requests
            else:
                serve.delete(APP_NAME)  # the cluster's other Serve applications and its controller stay
        finally:
            if initialized_here:
                ray.shutdown()

    import signal
    import threading

    stop = threading.Event()
    deploying = True

    def on_sigterm(*_):
        stop.set()
        if deploying:  # interrupts `serve.run`, still waiting for the app: what it deployed goes too
            raise KeyboardInterrupt

    if blocking:  # from the start of the deployment: a SIGTERM while it runs leaves nothing behind either
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        handle = serve.run(deployment.bind(), name=APP_NAME, route_prefix="/", blocking=False)
        deploying = False
    except BaseException as e:
        stop_serving()
        if isinstance(e, KeyboardInterrupt) and stop.is_set():
            return None
        raise
    log.info("Ray Serve: unime on http://%s:%d with %s, each on %s with %g CPU(s) (%d torch threads) and %g GPU(s)",
             host, port, options.get("autoscaling_config") or f"{replicas} replica(s)", config.device,
             num_cpus, config.threads, num_gpus)
    if not blocking:
        return handle
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_serving()
    return None


def _serve_details() -> dict | None:
    """What Ray Serve runs on the connected cluster (its controller's `get_serve_details()`: "applications",
    "http_options", ...), or None if Serve does not run there; looked up without starting it."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return None if client is None else client.get_serve_details()


def serve_conflict(details: dict) -> str | None:
    """What of the Serve applications in `details` (`_serve_details`) unime's app would replace: one named
    `APP_NAME`, or one on its route prefix "/"; None if none."""
    for name, app in sorted((details.get("applications") or {}).items()):
        prefix = (app or {}).get("route_prefix")
        if name == APP_NAME:
            return f"a Ray Serve application named '{name}' already runs" + (f" (route prefix {prefix})"
                                                                             if prefix else "")
        if prefix == "/":
            return f"the Ray Serve application '{name}' already serves route prefix /"
    return None


def serve_http(details: dict) -> tuple[str, int]:
    """The host and port Serve's HTTP proxies listen on, from `details` (`_serve_details`)."""
    http = details.get("http_options") or {}
    return str(http.get("host")), int(http.get("port"))
