"""``gunicorn -c conf/gunicorn.py`` from a checkout; the settings live in bruto.gateway.gunicorn_conf."""

from bruto.gateway.gunicorn_conf import *  # noqa: F401,F403  (gunicorn reads this module's names)
