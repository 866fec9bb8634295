"""gunicorn's configuration for one API instance: ``gunicorn -c python:bruto.gateway.gunicorn_conf``.

Every value that varies comes from bruto.config (``BRUTO_BIND``,
``BRUTO_WORKERS``, ``BRUTO_WORKER_CLASS``, ``BRUTO_LOG_LEVEL``, and the shared
directory and region sizes the hooks below use); the rest is fixed here, with
the reason beside it.
"""

import gc

from bruto.config import settings_or_exit
from bruto.shm.layout import create_all

_settings = settings_or_exit("gunicorn (bruto.gateway.gunicorn_conf)")

wsgi_app = "bruto.gateway.wsgi:app"
bind = [_settings.bind]
workers = _settings.workers
# NOTE: gunicorn's gevent worker with a C parser (httptools) and a lean
# environ: about half the CPU per request of `-k gevent` and a lower p99
# (docs/BENCHMARKS.md).
worker_class = _settings.worker_class
# The gevent pool size; must exceed the load balancer's upstream keepalive pool.
worker_connections = 1000
# Above the load balancer's upstream keepalive timeout (nginx's is lowered to
# 30 s in the testbed's nginx.conf), so gunicorn never closes a connection
# nginx is about to reuse: nginx does not retry a POST and would answer 502.
keepalive = 75
backlog = 2048
timeout = 30
graceful_timeout = 5
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
proc_name = "bruto-api"
# gunicorn >= 25 opens a control socket under $HOME by default; bruto has no use for it.
control_socket_disable = True


def on_starting(server):
    # Create the shared regions before any worker forks, so workers only attach.
    create_all(_settings)


def post_fork(server, worker):
    # Everything alive now (imports, config) lives for the whole process:
    # freeze it out of the collector's sight so gen-2 passes stay short, and
    # raise the gen-0 threshold so a burst of requests does not trigger
    # collections mid-burst (each request allocates a few short-lived objects).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
