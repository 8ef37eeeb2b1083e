"""``squeeze dashboard``: optuna-dashboard on a study's storage, with its artifact store, until Ctrl-C.

optuna-dashboard (the ``dashboard`` extra) reads Optuna's own tables, which squeeze leaves untouched:
it shows the objective names (Optuna's metric names), the Pareto front, each trial's parameters and
attributes, the study note, the hypervolume figure, and each trial's artifact for download. The server
binds to the loopback address unless told otherwise, because the dashboard can also change a study
(notes, uploads, deletion) and has no login.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import socketserver
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage

from squeeze.spaces import SqueezeError

from . import _storage as st
from ._artifact_store import artifact_store
from ._attrs import StudyAttr
from ._context import OBJECTIVE_NAMES, quiet_optuna
from ._pareto import HypervolumeSample
from ._snapshots import history
from ._study_views import dashboard_installed, save_hypervolume, write_note_once
from ._target import StudyRef, Target, open_study, resolve

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8080


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost`` (what binds without being reachable from elsewhere)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dashboard(study: StudyRef, *, storage: str | None = None, host: str = LOOPBACK, port: int = DEFAULT_PORT,
              on_ready: Callable[[str], None] = lambda _: None) -> None:
    """Serve optuna-dashboard on the study's storage until interrupted (Ctrl-C); ``on_ready(url)`` once it listens.

    ``url`` is the study's page (``http://HOST:PORT/dashboard/studies/ID``); ``port`` 0 takes a free port.
    Before serving, what a study written by an older squeeze lacks is filled in: the objective names,
    the study note and the hypervolume figure. Returns when interrupted (KeyboardInterrupt is absorbed).
    """
    target = resolve(study, storage=storage)
    if not dashboard_installed():
        raise SqueezeError("`squeeze dashboard` needs optuna-dashboard, which is not installed; "
                           "install it with `pip install 'squeeze-search[dashboard]'`.")
    import optuna_dashboard

    optuna_study, engine = open_study(target)
    prepare_views(target, optuna_study, engine)
    with quiet_optuna():
        # The storage as Optuna's tools open it; the study exists, so no table is created.
        rdb = RDBStorage(target.url, skip_table_creation=True)
        app = optuna_dashboard.wsgi(rdb, artifact_store=artifact_store(target.url, engine=engine))
    study_id = rdb.get_study_id_from_name(target.name)
    server = _bind(host, port, app)
    try:
        shown = f"[{host.strip('[]')}]" if ":" in host else host
        on_ready(f"http://{shown}:{server.server_port}/dashboard/studies/{study_id}")
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def prepare_views(target: Target, study: optuna.Study, engine: sa.Engine) -> None:
    """Objective names, the study note and the hypervolume figure, for a squeeze study that lacks them."""
    attrs = study.user_attrs
    if not attrs.get(StudyAttr.CREATED):
        return  # not a squeeze study: shown as it is
    if study.metric_names is None:
        with quiet_optuna():
            study.set_metric_names(list(OBJECTIVE_NAMES))
    config = st.load_config(engine, target.name)
    if config is not None:
        write_note_once(study, config)
    with st.study_lock(engine, target.name):  # workers may be saving the same figure (see _snapshots)
        save_hypervolume(study, [HypervolumeSample(trials=c, hypervolume=h, elapsed_s=e)
                                 for c, h, e in history(engine, target.name)])


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    # A browser opens several connections at once; one thread each, none kept alive after Ctrl-C.
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        # One line per request would bury the URL the command prints.
        pass


def _bind(host: str, port: int, app: object) -> WSGIServer:
    bare = host.strip("[]")
    try:
        return make_server(bare, port, app, server_class=_Server6 if ":" in bare else _Server,  # type: ignore[arg-type]
                           handler_class=_QuietHandler)
    except socket.gaierror:
        raise SqueezeError(f"`--host` must be an address or name of this machine, but {host!r} does not resolve; "
                           f"use {LOOPBACK} (the default).") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise SqueezeError(f"port {port} on {host} is already in use; pass `--port` with a free port "
                               f"(or 0 for any free one).") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            raise SqueezeError(f"`--host` must be an address of this machine, but got {host!r}; "
                               f"use {LOOPBACK} (the default).") from None
        if exc.errno == errno.EACCES:
            raise SqueezeError(f"port {port} needs privileges to bind; pass `--port` above 1023 "
                               f"(the default is {DEFAULT_PORT}).") from None
        raise
