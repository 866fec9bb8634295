"""bruto: a payment intermediary on Falcon, gunicorn + gevent and numpy shared memory."""
