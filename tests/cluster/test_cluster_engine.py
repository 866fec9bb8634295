"""The engine and its client: a throwaway server, psycopg under gevent, and no psycopg without a URL."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import psycopg

# Runs in its own interpreter: gevent's patch must come before psycopg is
# imported, as in bruto's entry points, and pytest's process is not patched.
_SLEEPER = textwrap.dedent("""
    import json, sys, time
    from gevent import monkey
    monkey.patch_all()
    import gevent
    import psycopg

    ticks = []
    def tick():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    def sleep_in_postgres():
        with psycopg.connect(sys.argv[1]) as conn:
            started = time.monotonic()
            conn.execute("SELECT pg_sleep(1)")
            return started, time.monotonic()

    ticker = gevent.spawn(tick)
    started, ended = gevent.spawn(sleep_in_postgres).get()
    ticker.kill()
    print(json.dumps({"ticks": sum(started <= t <= ended for t in ticks), "slept": ended - started}))
""")


def test_the_throwaway_server_keeps_what_was_committed_through_an_immediate_stop(postgres, database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (1), (2)")
    postgres.stop("immediate")
    assert not postgres.running()
    postgres.start_again()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT sum(n) FROM kept").fetchone()[0] == 3


def test_a_greenlet_waiting_on_pg_sleep_lets_the_others_run(database_url):
    done = subprocess.run([sys.executable, "-c", _SLEEPER, database_url], capture_output=True, text=True,
                          timeout=60, check=True)
    seen = json.loads(done.stdout)
    assert seen["slept"] >= 1.0
    # Another greenlet kept running while the query waited: a blocking wait
    # would have let it tick once at most (ticks every 10 ms: ~100 in 1 s).
    assert seen["ticks"] >= 20, seen


def test_without_a_database_url_no_process_imports_psycopg(tmp_path):
    script = textwrap.dedent("""
        import sys
        from gevent import monkey
        monkey.patch_all()
        from bruto.config import Settings
        from bruto.shm.layout import create_all
        settings = Settings(shm_dir=sys.argv[1])
        create_all(settings)
        from bruto.gateway.app import create_app
        create_app(settings)
        from bruto.dispatcher.service import Dispatcher
        Dispatcher(settings).recover()
        print(sorted(name for name in sys.modules if name.split(".")[0] in ("psycopg", "psycopg_pool", "bruto")))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "shm")], capture_output=True, text=True,
                          timeout=60, check=True, env={"PATH": "/usr/bin:/bin"})
    loaded = done.stdout
    assert "bruto.gateway.app" in loaded and "bruto.dispatcher.service" in loaded
    assert "psycopg" not in loaded
    assert not any(f"bruto.cluster.{module}" in loaded for module in ("database", "link", "summary", "lookup"))
