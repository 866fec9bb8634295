"""``bruto-dispatcher``: patch the standard library for gevent, then run the dispatcher.

The patch must come before any module that uses sockets, ssl or threads is
imported, so it happens here, in the entry point, and nowhere else.
"""

from gevent import monkey

monkey.patch_all()


def main() -> None:
    from bruto.dispatcher.service import main as run

    run()


if __name__ == "__main__":
    main()
