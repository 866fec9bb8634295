"""WSGI entry point for gunicorn: ``bruto.gateway.wsgi:app``.

Imported in each worker after the fork (the config does not preload), so every
worker claims its own intake slot.
"""

from bruto.gateway.app import create_app

app = create_app()
