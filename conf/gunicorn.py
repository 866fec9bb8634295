"""gunicorn configuration for one bruto API instance: ``gunicorn -c conf/gunicorn.py``.

Environment:
    BRUTO_BIND      where to listen: ``host:port`` or ``unix:/path`` (default 0.0.0.0:9999)
    BRUTO_WORKERS   gevent workers in this instance (default 1)
    BRUTO_WORKER_CLASS  gunicorn worker class (default bruto.worker.HttptoolsGeventWorker,
                    gevent with an httptools parser; ``gevent`` is gunicorn's own)
    BRUTO_*         everything in bruto/config.py (shared directory, sizes, processors)
"""

import gc
import os

from bruto.config import Settings
from bruto.layout import create_all

wsgi_app = "bruto.wsgi:app"
bind = [os.environ.get("BRUTO_BIND", "0.0.0.0:9999")]
workers = int(os.environ.get("BRUTO_WORKERS", "1"))
# NOTE: gunicorn's gevent worker with a C parser (httptools) and a lean
# environ: about half the CPU per request of `-k gevent` and a lower p99
# (docs/BENCHMARKS.md, 2026-11-25 12:18 and 12:27).
worker_class = os.environ.get("BRUTO_WORKER_CLASS", "bruto.worker.HttptoolsGeventWorker")
# The gevent pool size; must exceed the load balancer's upstream keepalive pool.
worker_connections = 1000
# Above the load balancer's upstream keepalive timeout (nginx: 60 s by default
# is lowered to 30 s in conf/nginx.conf), so gunicorn never closes a connection
# nginx is about to reuse: nginx does not retry a POST and would answer 502.
keepalive = 75
backlog = 2048
timeout = 30
graceful_timeout = 5
accesslog = None
errorlog = "-"
loglevel = os.environ.get("BRUTO_LOG_LEVEL", "info")
proc_name = "bruto-api"
# gunicorn >= 25 opens a control socket under $HOME by default; bruto has no use for it.
control_socket_disable = True


def on_starting(server):
    # Create the shared regions before any worker forks, so workers only attach.
    create_all(Settings.from_env())


def post_fork(server, worker):
    # Everything alive now (imports, config) lives for the whole process:
    # freeze it out of the collector's sight so gen-2 passes stay short, and
    # raise the gen-0 threshold so a burst of requests does not trigger
    # collections mid-burst (each request allocates a few short-lived objects).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
