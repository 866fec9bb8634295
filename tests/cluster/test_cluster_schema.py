"""bruto's schema: created by bruto on an empty database, once, however many hosts start at once."""

from __future__ import annotations

import threading

import psycopg
import pytest

from bruto.cluster import schema


def test_an_empty_database_gets_every_table_and_a_second_run_changes_nothing(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert schema.migrate(conn) == [version for version, _ in schema.MIGRATIONS]
        assert schema.migrate(conn) == []
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        versions = [row[0] for row in conn.execute("SELECT version FROM bruto_schema ORDER BY version")]
    assert {"bruto_schema", "bruto_hosts", "bruto_claims", "bruto_payments"} <= tables
    assert versions == [version for version, _ in schema.MIGRATIONS] and versions[-1] == schema.LATEST


def test_hosts_starting_at_once_apply_each_migration_exactly_once(database_url):
    hosts = 6
    connections = [psycopg.connect(database_url, autocommit=True) for _ in range(hosts)]
    start = threading.Barrier(hosts)
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def host(conn):
        start.wait()
        try:
            applied.append(schema.migrate(conn))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=host, args=(conn,)) for conn in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for conn in connections:
        conn.close()
    assert errors == []
    # One host applies every migration, in order; the others find nothing left to do.
    assert sorted(applied, key=len) == [[]] * (hosts - 1) + [[version for version, _ in schema.MIGRATIONS]]


def test_a_schema_newer_than_this_bruto_is_refused(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        schema.migrate(conn)
        conn.execute("INSERT INTO bruto_schema (version) VALUES (%s)", (schema.LATEST + 1,))
        with pytest.raises(schema.SchemaTooNew):
            schema.migrate(conn)
