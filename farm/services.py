"""``farm up``, ``farm api`` and ``farm worker``: starting the farm's processes.

``farm up`` is the embedded farm on one host: it migrates the database, starts the API server and
one worker for this host's profile as child processes, prints the URL, and stops every process it
started on Ctrl-C or SIGTERM (or when one of them dies).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import FrameType

import click

from farm.config import Settings, SettingsError, get_settings

STOP_GRACE_SECONDS = 15
API_READY_TIMEOUT_SECONDS = 60


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def _resolve_profiles(
    requested: tuple[str, ...], settings: Settings, *, any_hardware: bool = False
) -> list[str]:
    """The profiles to serve: ``--profile``, else ``FARM_PROFILE``, else every profile this host matches.

    A named profile must exist and, unless ``any_hardware``, match this host: a worker that builds
    H200 engines on another GPU would publish numbers for hardware it does not have.
    """
    from farm.profiles import UnknownProfileError, detect_host, get_profile, matching_profiles

    host = detect_host()
    names = [
        name.strip() for item in requested for name in item.split(",") if name.strip()
    ] or settings.profiles
    if not names:
        return [profile.name for profile in matching_profiles(host)]
    for name in names:
        try:
            profile = get_profile(name)
        except UnknownProfileError as exc:
            raise click.ClickException(str(exc)) from exc
        if not any_hardware and not profile.matches(host):
            served = ", ".join(p.name for p in matching_profiles(host))
            raise click.ClickException(
                f"this host does not match profile {name!r} (it matches: {served}); "
                "pass --any-hardware to serve it anyway"
            )
    return names


ANY_HARDWARE_OPTION = click.option(
    "--any-hardware",
    is_flag=True,
    help="Serve the named profiles even when this host's hardware does not match.",
)


@click.command()
@click.option("--host", default=None, help="Address to listen on (default FARM_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default FARM_PORT, 8080).")
@click.option("--workers", "api_workers", type=int, default=None, help="gunicorn worker processes.")
def api_cmd(host: str | None, port: int | None, api_workers: int | None) -> None:
    """Start the API and dashboard server (gunicorn)."""
    settings = _settings()
    bind = f"{host or settings.host}:{port or settings.port}"
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind,
        "--workers",
        str(api_workers or settings.api_workers),
        "--threads",
        "4",
        "--timeout",
        "300",  # large uploads on slow links
        "--keep-alive",
        "75",  # longer than any client's pause between polls: a request never races a server-side close
        "--access-logfile",
        "-",
        "--log-level",
        settings.log_level.lower(),
        "farm.app:create_app()",
    ]
    click.echo(f"farm api: serving on http://{bind}/", err=True)
    os.execv(sys.executable, argv)


@click.command()
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    help="Profile to serve (repeat or comma-separate); default: detect.",
)
@click.option(
    "--concurrency", type=int, default=None, help="Jobs at once (default FARM_WORKER_CONCURRENCY, 1)."
)
@click.option("--name", default=None, help="Worker name (default: PROFILES.PID@HOSTNAME).")
@ANY_HARDWARE_OPTION
def worker_cmd(
    profiles: tuple[str, ...], concurrency: int | None, name: str | None, any_hardware: bool
) -> None:
    """Start a worker serving the queues of this host's profiles."""
    settings = _settings()
    profile_names = _resolve_profiles(profiles, settings, any_hardware=any_hardware)
    run_worker(settings, profile_names, concurrency=concurrency, name=name)


def _warm_up(profiles: list[str]) -> None:
    """Compile the kernels of every served profile before the first job (FARM_WORKER_WARMUP).

    The worker heartbeats meanwhile, so jobs submitted now wait in the broker, not for a worker.
    A failed warm-up build is reported and the worker starts anyway.
    """
    from farm.compiler.warmup import warm_up

    for profile in profiles:
        click.echo(f"farm worker: warming up the {profile} kernels (FARM_WORKER_WARMUP)", err=True)
        report = warm_up(
            profile=profile,
            on_done=lambda step: click.echo(
                f"farm worker: warm-up {step.model} {step.precision}: {step.seconds:.1f} s, "
                f"{step.compiled} compiled, {step.loaded} from cache"
                + ("" if step.error is None else f", FAILED: {step.error}"),
                err=True,
            ),
        )
        click.echo(
            f"farm worker: {profile} warm-up done in {report.seconds:.0f} s "
            f"({report.compiled} kernel signatures compiled, {report.loaded} loaded, "
            f"{len(report.failed)} build(s) failed)",
            err=True,
        )


def run_worker(
    settings: Settings, profiles: list[str], *, concurrency: int | None = None, name: str | None = None
) -> None:
    """Run a Celery worker on the queues of ``profiles``, heartbeating into the database, until stopped."""
    from celery.signals import worker_process_init

    from farm.app import create_app
    from farm.profiles import detect_host
    from farm.worker import tasks  # noqa: F401 - registers the tasks
    from farm.worker.heartbeat import HeartbeatThread

    app = create_app(settings)
    services = app.extensions["farm"]
    node_name = name or f"{'+'.join(profiles)}.{os.getpid()}@{socket.gethostname()}"
    host = detect_host()

    @worker_process_init.connect(weak=False)
    def _fresh_connections(**_: object) -> None:
        # a forked pool process must not share the parent's database connections
        services.db.engine.dispose(close=False)

    swept = services.store.sweep_temp()
    if swept:
        click.echo(
            f"farm worker: removed {len(swept)} partial upload(s) left in the artifact store's tmp/", err=True
        )
    queue_names = [f"profile.{profile}" for profile in profiles]
    prepare_broker(settings, queue_names)
    heartbeat = HeartbeatThread(
        services.db, name=node_name, profiles=profiles, host=host, interval=settings.heartbeat_seconds
    )
    heartbeat.start()
    if settings.worker_warmup:
        _warm_up(profiles)
    queues = ",".join(queue_names)
    click.echo(f"farm worker {node_name}: serving {queues}", err=True)
    try:
        services.celery.worker_main(
            [
                "worker",
                "--hostname",
                node_name,
                "--queues",
                queues,
                "--concurrency",
                str(concurrency or settings.worker_concurrency),
                "--loglevel",
                settings.log_level,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    finally:
        heartbeat.stop()


@click.command()
@click.option("--host", default=None, help="Address to listen on (default FARM_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default FARM_PORT, 8080).")
@click.option("--profile", "profiles", multiple=True, help="Profile of the local worker; default: detect.")
@ANY_HARDWARE_OPTION
def up_cmd(host: str | None, port: int | None, profiles: tuple[str, ...], any_hardware: bool) -> None:
    """Start the whole farm on this host: migrate, then the API and one local worker."""
    from farm.db import migrate

    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    profile_names = _resolve_profiles(profiles, settings, any_hardware=any_hardware)
    settings.ensure_local_paths()
    click.echo(f"farm up: migrating {settings.database_url}", err=True)
    migrate.upgrade(settings.sqlalchemy_url)
    prepare_broker(settings, [f"profile.{name}" for name in profile_names])

    farm_cli = [sys.executable, "-m", "farm.cli"]
    supervisor = Supervisor()
    supervisor.install_signal_handlers()
    try:
        supervisor.start("api", [*farm_cli, "api", "--host", host, "--port", str(port)])
        worker_args = ["worker", "--profile", ",".join(profile_names)] + (
            ["--any-hardware"] if any_hardware else []
        )
        supervisor.start("worker", [*farm_cli, *worker_args])
        url = f"http://{_display_host(host)}:{port}/"
        if not supervisor.wait_for_http(url + "api/v1/health", API_READY_TIMEOUT_SECONDS):
            if supervisor.stop_requested:
                return
            raise click.ClickException("the API did not start; see its log above")
        click.echo(
            f"Engine Farm is running at {url}  (worker profiles: {', '.join(profile_names)}; Ctrl-C stops)"
        )
        exit_code = supervisor.wait()
    finally:
        supervisor.stop_all()
    if exit_code:
        raise SystemExit(exit_code)


def prepare_broker(settings: Settings, queues: list[str]) -> None:
    """Declare ``queues`` once, before the API and the worker start.

    kombu's SQL transport creates its tables and each queue's row on first use; two processes
    doing that at the same moment on SQLite can crash one of them with a duplicate row.
    """
    from farm.worker.celery_app import create_celery

    celery = create_celery(settings)
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=3)
        for queue in queues:
            connection.default_channel.queue_declare(queue=queue)


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)


class Supervisor:
    """Child processes started together and stopped together (each in its own process group)."""

    def __init__(self) -> None:
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_requested = False

    def install_signal_handlers(self) -> None:
        """Turn SIGINT and SIGTERM into an orderly stop of every child."""

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            self.stop_requested = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

    def start(self, name: str, argv: list[str]) -> None:
        """Start ``argv`` as the child ``name`` in a new session, so its own children stop with it."""
        self.children[name] = subprocess.Popen(argv, start_new_session=True)

    def wait_for_http(self, url: str, timeout: float) -> bool:
        """Poll ``url`` until it answers (any HTTP status), a child dies, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_requested:
            if self._dead_child() is not None:
                return False
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                time.sleep(0.3)
        return False

    def wait(self) -> int:
        """Block until a stop is requested (0) or a child exits on its own (its exit code, at least 1)."""
        while not self.stop_requested:
            dead = self._dead_child()
            if dead is not None:
                name, code = dead
                click.echo(f"farm up: {name} exited with code {code}; stopping everything", err=True)
                return code or 1
            time.sleep(0.3)
        click.echo("farm up: stopping", err=True)
        return 0

    def stop_all(self) -> None:
        """SIGTERM every child, wait for it, then SIGKILL whatever is left in its process group."""
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            # grandchildren (gunicorn workers, the Celery pool) whose parent is gone
            _signal_group(child, signal.SIGKILL)

    def _dead_child(self) -> tuple[str, int] | None:
        for name, child in self.children.items():
            code = child.poll()
            if code is not None:
                return name, code
        return None


def _signal_group(child: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signum)
