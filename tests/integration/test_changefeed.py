"""The changefeed procedures against SQL Server: ordering, paging, modes, errors, filters.

Each test gets a fresh migrated database (``migrated_dsn``) and talks to it as a
T-SQL or pyodbc user would, through tests/integration/feedsql.py.
"""

from __future__ import annotations

import calendar
import contextlib
import itertools
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pyodbc
import pytest

from tests.integration.feedsql import (
    FIRST,
    connect,
    create_feed,
    error_of,
    head,
    is_blocked_by,
    list_feeds,
    publish,
    publish_batch,
    read_all,
    read_feed,
    session_id,
    time_hint,
    wait_until,
)
from zeh_mssql import db


@pytest.fixture
def admin(migrated_dsn) -> Iterator[pyodbc.Connection]:
    conn = connect(migrated_dsn)
    yield conn
    conn.close()


@contextlib.contextmanager
def transaction(conn: pyodbc.Connection) -> Iterator[None]:
    """An explicit transaction on an autocommit connection, as T-SQL writers write one."""
    conn.execute("begin transaction")
    try:
        yield
    except BaseException:
        conn.execute("if @@trancount > 0 rollback transaction")
        raise
    conn.execute("commit transaction")


def ms(moment: datetime) -> int:
    """Unix milliseconds of a naive UTC datetime."""
    return calendar.timegm(moment.timetuple()) * 1000 + moment.microsecond // 1000


def numbers(rows) -> list[int]:
    return [row.json["i"] for row in rows]


def assert_strictly_increasing(rows) -> None:
    ulids = [row.ulid for row in rows]
    assert all(a < b for a, b in itertools.pairwise(ulids)), ulids


# --- feeds --------------------------------------------------------------------------


def test_create_feed_is_idempotent_and_list_feeds_lists_them(admin):
    create_feed(admin, "orders", 4)
    create_feed(admin, "orders", 4, "outbox")  # the same arguments again: no change
    create_feed(admin, "audit", 1, "blocking")
    admin.execute("exec changefeed.create_feed @name = ?, @partition_count = ?", "plain", 2)
    assert list_feeds(admin) == [
        ("audit", 1, "blocking"),
        ("orders", 4, "outbox"),
        ("plain", 2, "outbox"),  # outbox is the default mode
    ]


def test_every_partition_of_a_new_feed_is_empty(admin):
    create_feed(admin, "orders", 3)
    for partition in range(3):
        assert read_feed(admin, "orders", partition) == ([], FIRST)
        assert head(admin, "orders", partition) is None


# --- outbox mode ----------------------------------------------------------------------


def test_outbox_orders_by_publish_not_by_time_hint(admin):
    create_feed(admin, "orders", 2)
    base = datetime(2024, 1, 2, 3, 4, 5, 678000)
    hints = [base + timedelta(seconds=4 - i) for i in range(5)]  # newest first
    for i, hint in enumerate(hints):
        publish(admin, "orders", {"i": i}, partition=1, hint=hint)  # one transaction each
    rows, _ = read_all(admin, "orders", 1)
    assert numbers(rows) == [0, 1, 2, 3, 4]
    assert_strictly_increasing(rows)
    times = [row.ulid_ms for row in rows]
    assert times == sorted(times)
    # Time never goes backwards: the later, older hints are pulled up to the first.
    assert times == [ms(hints[0])] * 5
    assert [ms(row.time) for row in rows] == times
    assert read_all(admin, "orders", 0) == ([], FIRST)


def test_outbox_time_component_follows_increasing_hints(admin):
    create_feed(admin, "orders", 1)
    base = datetime(2024, 5, 6, 7, 8, 9, 123000)
    hints = [base + timedelta(milliseconds=250 * i) for i in range(4)]
    for i, hint in enumerate(hints):
        publish(admin, "orders", {"i": i}, partition=0, hint=hint)
    rows, _ = read_all(admin, "orders", 0)
    assert numbers(rows) == [0, 1, 2, 3]
    assert [row.ulid_ms for row in rows] == [ms(h) for h in hints]


def test_paging_three_at_a_time_over_five_and_rereading(admin):
    create_feed(admin, "orders", 1)
    for i in range(5):
        publish(admin, "orders", {"i": i}, partition=0)

    first_page, cursor1 = read_feed(admin, "orders", 0, pagesize=3)
    assert numbers(first_page) == [0, 1, 2]
    assert cursor1 == first_page[-1].ulid
    second_page, cursor2 = read_feed(admin, "orders", 0, cursor1, pagesize=3)
    assert numbers(second_page) == [3, 4]
    assert cursor2 == second_page[-1].ulid
    assert read_feed(admin, "orders", 0, cursor2, pagesize=3) == ([], cursor2)

    pages = first_page + second_page
    assert_strictly_increasing(pages)
    again, end = read_all(admin, "orders", 0, pagesize=3)
    assert [row.ulid for row in again] == [row.ulid for row in pages]
    assert end == cursor2
    # A cursor in the middle continues right after it.
    middle, _ = read_all(admin, "orders", 0, pages[1].ulid, pagesize=2)
    assert [row.ulid for row in middle] == [row.ulid for row in pages[2:]]


def test_payload_headers_and_type_come_back_as_published(admin):
    create_feed(admin, "orders", 1)
    data = {"name": "Zoë ✓ 🚀", "nested": {"list": [1, 2.5, None, True]}}
    headers = json.dumps({"trace": "abc-123", "tenant": "ünï"}, ensure_ascii=False)
    publish(admin, "orders", data, partition=0, event_type="OrderPlaced", headers=headers)
    publish(admin, "orders", "[1, 2]", partition=0)
    rows, _ = read_all(admin, "orders", 0)
    assert [row.json for row in rows] == [data, [1, 2]]
    assert json.loads(rows[0].headers) == json.loads(headers)
    assert rows[0].event_type == "OrderPlaced"
    assert rows[1].headers is None
    assert rows[1].event_type is None


def test_an_open_writer_transaction_does_not_stop_readers(migrated_dsn, admin):
    create_feed(admin, "orders", 1)
    publish(admin, "orders", {"i": 0}, partition=0)
    writer = connect(migrated_dsn)
    reader = connect(migrated_dsn)
    try:
        writer.execute("begin transaction")
        publish(writer, "orders", {"i": 1}, partition=0)  # stays uncommitted for now
        publish(admin, "orders", {"i": 2}, partition=0)
        # A reader that waited on the writer's locks would fail here, not hang.
        reader.execute("set lock_timeout 10000")
        rows, cursor = read_all(reader, "orders", 0)
        assert numbers(rows) == [0, 2]

        writer.execute("commit transaction")
        later, _ = read_all(reader, "orders", 0, cursor)
        assert numbers(later) == [1]
        assert later[0].ulid > rows[-1].ulid
        everything, _ = read_all(reader, "orders", 0)
        assert numbers(everything) == [0, 2, 1]
    finally:
        writer.close()
        reader.close()


def test_a_rolled_back_event_never_appears(migrated_dsn, admin):
    create_feed(admin, "orders", 1)
    writer = connect(migrated_dsn)
    try:
        writer.execute("begin transaction")
        publish(writer, "orders", {"i": 0}, partition=0)
        writer.execute("rollback transaction")
    finally:
        writer.close()
    publish(admin, "orders", {"i": 1}, partition=0)
    rows, _ = read_all(admin, "orders", 0)
    assert numbers(rows) == [1]


def test_a_transaction_that_commits_before_another_begins_comes_first(admin):
    create_feed(admin, "orders", 1)
    with transaction(admin):
        publish(admin, "orders", {"i": 0}, partition=0)
        publish(admin, "orders", {"i": 1}, partition=0)
    with transaction(admin):
        publish(admin, "orders", {"i": 2}, partition=0)
    rows, _ = read_all(admin, "orders", 0)
    assert numbers(rows) == [0, 1, 2]
    assert_strictly_increasing(rows)


# --- blocking mode ---------------------------------------------------------------------


def test_blocking_mode_one_transaction_is_contiguous_and_the_next_is_greater(migrated_dsn, admin):
    create_feed(admin, "payments", 1, "blocking")
    first = connect(migrated_dsn)
    second = connect(migrated_dsn)
    second_session = session_id(second)
    failures: list[BaseException] = []

    def second_writer() -> None:
        try:
            with transaction(second):
                publish(second, "payments", {"t": "B", "i": 0}, partition=0)
                publish(second, "payments", {"t": "B", "i": 1}, partition=0)
        except BaseException as exc:
            failures.append(exc)

    first_session = session_id(first)
    thread = threading.Thread(target=second_writer)
    try:
        with transaction(first):
            publish(first, "payments", {"t": "A", "i": 0}, partition=0)
            thread.start()
            # The second writer must wait for the shard until the first commits.
            wait_until(
                lambda: is_blocked_by(admin, second_session, first_session),
                "the second writer to wait for the first",
            )
            publish(first, "payments", {"t": "A", "i": 1}, partition=0)
            publish(first, "payments", {"t": "A", "i": 2}, partition=0)
    finally:
        if thread.ident is not None:
            thread.join(timeout=120)
        first.close()
        second.close()
    assert not thread.is_alive()
    assert failures == []

    rows, _ = read_all(admin, "payments", 0)
    assert [(row.json["t"], row.json["i"]) for row in rows] == [
        ("A", 0),
        ("A", 1),
        ("A", 2),
        ("B", 0),
        ("B", 1),
    ]
    assert_strictly_increasing(rows)
    # Blocking mode writes straight to the log: nothing waits in the outbox.
    assert admin.execute("select count(*) from changefeed.outbox").fetchone()[0] == 0


def test_blocking_mode_orders_by_publish_with_non_decreasing_time(admin):
    create_feed(admin, "payments", 2, "blocking")
    base = datetime(2024, 1, 2, 3, 4, 5, 678000)
    for i in range(5):
        publish(admin, "payments", {"i": i}, partition=0, hint=base - timedelta(seconds=i))
    rows, _ = read_all(admin, "payments", 0)
    assert numbers(rows) == [0, 1, 2, 3, 4]
    assert_strictly_increasing(rows)
    assert [row.ulid_ms for row in rows] == [ms(base)] * 5
    assert head(admin, "payments", 0) == rows[-1].ulid
    assert head(admin, "payments", 1) is None


def test_blocking_mode_a_reader_never_skips_an_uncommitted_event(migrated_dsn, admin):
    create_feed(admin, "payments", 1, "blocking")
    publish(admin, "payments", {"i": 0}, partition=0)
    reader = connect(migrated_dsn)
    writer = connect(migrated_dsn)
    try:
        rows, cursor = read_feed(reader, "payments", 0)
        assert numbers(rows) == [0]
        writer.execute("begin transaction")
        publish(writer, "payments", {"i": 1}, partition=0)
        # Waiting for the writer (error 1222 once the lock timeout passes) or an
        # unchanged cursor are both safe; moving past the uncommitted event is not.
        reader.execute("set lock_timeout 1000")
        try:
            outcome: object = read_feed(reader, "payments", 0, cursor)
        except pyodbc.Error as exc:
            outcome = db.error_number(exc)
        assert outcome in (([], cursor), 1222)
        writer.execute("commit transaction")
        reader.execute("set lock_timeout -1")
        later, _ = read_all(reader, "payments", 0, cursor)
        assert numbers(later) == [1]
    finally:
        writer.close()
        reader.close()


# --- publish_batch ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["outbox", "blocking"])
def test_publish_batch_keeps_ordinal_order_per_partition(admin, mode):
    create_feed(admin, "orders", 2, mode)
    hint = time_hint(datetime(2024, 3, 4, 5, 6, 7, 890000))
    events = [
        {"ordinal": 30, "partition": 1, "data": json.dumps({"i": 3})},
        {"ordinal": 10, "partition": 1, "data": json.dumps({"i": 1}), "event_type": "T"},
        {"ordinal": 20, "partition": 0, "data": json.dumps({"i": 2}), "time_hint": hint},
        {"ordinal": 5, "partition": 1, "data": json.dumps({"i": 0}), "headers": '{"h": "v"}'},
        {"ordinal": 40, "partition": 0, "data": json.dumps({"i": 4})},
    ]
    publish_batch(admin, "orders", events)
    ones, _ = read_all(admin, "orders", 1)
    zeros, _ = read_all(admin, "orders", 0)
    assert numbers(ones) == [0, 1, 3]
    assert numbers(zeros) == [2, 4]
    assert_strictly_increasing(ones)
    assert_strictly_increasing(zeros)
    assert ones[0].headers == '{"h": "v"}'
    assert ones[1].event_type == "T"
    assert zeros[0].ulid_ms == ms(datetime(2024, 3, 4, 5, 6, 7, 890000))


def test_publish_batch_of_nothing_publishes_nothing(admin):
    create_feed(admin, "orders", 1)
    publish_batch(admin, "orders", [])
    assert read_all(admin, "orders", 0) == ([], FIRST)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"partition": 5}, 51002),
        ({"partition": 0, "partition_key": "k"}, 51008),
        ({}, 51008),
        ({"partition": 0, "data": "{nope"}, 51003),
        ({"partition": 0, "headers": '{"n": 1}'}, 51004),
        ({"partition_key": "k" * 451}, 51013),
    ],
)
def test_publish_batch_is_all_or_nothing(admin, bad, error):
    create_feed(admin, "orders", 2)
    good = [{"ordinal": i, "partition": 0, "data": "{}"} for i in (1, 2)]
    bad_event = {"ordinal": 3, "data": "{}", **bad}
    assert error_of(lambda: publish_batch(admin, "orders", [*good, bad_event])) == error
    assert read_all(admin, "orders", 0) == ([], FIRST)


# --- errors: every number of the contract ----------------------------------------------


def test_unknown_feed_51001(admin):
    assert error_of(lambda: publish(admin, "nope", {}, partition=0)) == 51001
    assert error_of(lambda: publish_batch(admin, "nope", [])) == 51001
    assert error_of(lambda: read_feed(admin, "nope", 0)) == 51001
    assert error_of(lambda: head(admin, "nope", 0)) == 51001


@pytest.mark.parametrize("mode", ["outbox", "blocking"])
def test_partition_out_of_range_51002(admin, mode):
    create_feed(admin, "orders", 2, mode)
    for partition in (2, -1):
        assert error_of(lambda p=partition: publish(admin, "orders", {}, partition=p)) == 51002
        assert error_of(lambda p=partition: read_feed(admin, "orders", p)) == 51002
        assert error_of(lambda p=partition: head(admin, "orders", p)) == 51002


@pytest.mark.parametrize("data", ["{nope", "", "not json", None])
def test_data_not_json_51003(admin, data):
    create_feed(admin, "orders", 1)
    assert error_of(lambda: publish(admin, "orders", data, partition=0)) == 51003


@pytest.mark.parametrize("event_types", ["[nope", '{"a": "b"}', '["a", 1]'])
def test_event_types_not_a_json_array_of_strings_51003(admin, event_types):
    create_feed(admin, "orders", 1)
    call = lambda: admin.execute(  # noqa: E731
        "exec changefeed.read_feed @feed = ?, @partition = 0, @event_types = ?",
        "orders",
        event_types,
    ).fetchall()
    assert error_of(call) == 51003


@pytest.mark.parametrize("headers", ['{"n": 1}', '{"o": {}}', '["a"]', '"text"', "{nope"])
def test_headers_not_an_object_of_strings_51004(admin, headers):
    create_feed(admin, "orders", 1)
    assert error_of(lambda: publish(admin, "orders", {}, partition=0, headers=headers)) == 51004


def test_read_feed_inside_a_transaction_51005(admin):
    create_feed(admin, "orders", 1)
    create_feed(admin, "payments", 1, "blocking")
    admin.execute("begin transaction")
    try:
        assert error_of(lambda: read_feed(admin, "orders", 0)) == 51005
        assert error_of(lambda: read_feed(admin, "payments", 0)) == 51005
        # head drains in outbox mode, so it too refuses a caller's transaction.
        assert error_of(lambda: head(admin, "orders", 0)) == 51005
    finally:
        admin.execute("if @@trancount > 0 rollback transaction")


@pytest.mark.parametrize(("count", "mode"), [(3, "outbox"), (4, "blocking"), (3, "blocking")])
def test_create_feed_again_with_other_arguments_51006(admin, count, mode):
    create_feed(admin, "orders", 4, "outbox")
    assert error_of(lambda: create_feed(admin, "orders", count, mode)) == 51006
    assert list_feeds(admin) == [("orders", 4, "outbox")]


@pytest.mark.parametrize("mode", ["kafka", "", None])
def test_mode_not_outbox_or_blocking_51007(admin, mode):
    assert error_of(lambda: create_feed(admin, "orders", 1, mode)) == 51007
    assert list_feeds(admin) == []


def test_partition_and_key_exactly_one_51008(admin):
    create_feed(admin, "orders", 2)
    both = lambda: publish(admin, "orders", {}, partition=0, partition_key="k")  # noqa: E731
    assert error_of(both) == 51008
    assert error_of(lambda: publish(admin, "orders", {})) == 51008


def test_partition_key_over_450_characters_51013(admin):
    create_feed(admin, "orders", 4)
    # A parameter would cut a longer key silently, hashing another key; it is refused.
    assert error_of(lambda: publish(admin, "orders", {}, partition_key="k" * 451)) == 51013
    assert error_of(lambda: publish(admin, "orders", {}, partition_key="k" * 450 + " ")) == 51013
    publish(admin, "orders", {}, partition_key="é" * 450)
    total = sum(len(read_all(admin, "orders", p)[0]) for p in range(4))
    assert total == 1


@pytest.mark.parametrize("count", [0, -1, 4097, None])
def test_bad_partition_count_51009(admin, count):
    assert error_of(lambda: create_feed(admin, "orders", count)) == 51009


@pytest.mark.parametrize("name", ["", "bad name", "-leading", "semi;colon", "naïve", None])
def test_bad_feed_name_51010(admin, name):
    assert error_of(lambda: create_feed(admin, name, 1)) == 51010


@pytest.mark.parametrize("pagesize", [0, -5, None])
def test_bad_pagesize_51011(admin, pagesize):
    create_feed(admin, "orders", 1)
    assert error_of(lambda: read_feed(admin, "orders", 0, pagesize=pagesize)) == 51011


def test_errors_leave_the_writer_transaction_to_the_writer(admin):
    create_feed(admin, "orders", 1)
    admin.execute("begin transaction")
    try:
        publish(admin, "orders", {"i": 0}, partition=0)
        assert error_of(lambda: publish(admin, "orders", "{nope", partition=0)) == 51003
        assert admin.execute("select @@trancount").fetchone()[0] == 1
        admin.execute("commit transaction")
    finally:
        admin.execute("if @@trancount > 0 rollback transaction")
    rows, _ = read_all(admin, "orders", 0)
    assert numbers(rows) == [0]


# --- type filters and drain = 0 ------------------------------------------------------------

TYPES = ["Created", "updated", "Deleted", "CREATED", None, "Other"]


@pytest.fixture
def typed_feed(admin) -> list:
    create_feed(admin, "typed", 1)
    for i, event_type in enumerate(TYPES):
        publish(admin, "typed", {"i": i}, partition=0, event_type=event_type)
    rows, _ = read_all(admin, "typed", 0)  # drained: the filters below read the log
    assert numbers(rows) == list(range(len(TYPES)))
    return rows


def test_type_filter_matches_case_insensitively(admin, typed_feed):
    rows, cursor = read_feed(admin, "typed", 0, event_types=["created"])
    assert numbers(rows) == [0, 3]
    assert cursor == typed_feed[-1].ulid  # the whole window was scanned


def test_type_filter_excluding(admin, typed_feed):
    rows, cursor = read_feed(admin, "typed", 0, event_types=["created", "deleted"], exclude=True)
    assert numbers(rows) == [1, 4, 5]  # an event without a type matches no name
    assert cursor == typed_feed[-1].ulid


def test_type_filter_scans_a_window_of_pagesize_events(admin, typed_feed):
    pages = []
    cursor = FIRST
    for _ in range(4):
        rows, cursor = read_feed(admin, "typed", 0, cursor, pagesize=2, event_types=["created"])
        pages.append((numbers(rows), cursor))
    ulids = [row.ulid for row in typed_feed]
    assert pages == [([0], ulids[1]), ([3], ulids[3]), ([], ulids[5]), ([], ulids[5])]


def test_type_filter_with_no_match_still_moves_the_cursor(admin, typed_feed):
    rows, cursor = read_feed(admin, "typed", 0, event_types=["nothing"])
    assert rows == []
    assert cursor == typed_feed[-1].ulid


def test_drain_zero_reads_only_what_is_already_in_the_log(migrated_dsn, admin):
    create_feed(admin, "orders", 1)
    publish(admin, "orders", {"i": 0}, partition=0)
    publish(admin, "orders", {"i": 1}, partition=0)
    assert read_feed(admin, "orders", 0, drain=False) == ([], FIRST)
    assert admin.execute("select count(*) from changefeed.outbox").fetchone()[0] == 2

    rows, cursor = read_feed(admin, "orders", 0)
    assert numbers(rows) == [0, 1]
    publish(admin, "orders", {"i": 2}, partition=0)
    again, again_cursor = read_feed(admin, "orders", 0, drain=False)
    assert [row.ulid for row in again] == [row.ulid for row in rows]
    assert again_cursor == cursor
    assert read_feed(admin, "orders", 0, cursor, drain=False) == ([], cursor)
    assert numbers(read_feed(admin, "orders", 0, cursor)[0]) == [2]


# --- head ---------------------------------------------------------------------------------


def test_head_drains_and_returns_the_last_ulid(admin):
    create_feed(admin, "orders", 2)
    assert head(admin, "orders", 0) is None
    for i in range(3):
        publish(admin, "orders", {"i": i}, partition=0)
    last = head(admin, "orders", 0)
    assert admin.execute("select count(*) from changefeed.outbox").fetchone()[0] == 0
    rows, cursor = read_all(admin, "orders", 0)
    assert numbers(rows) == [0, 1, 2]
    assert last == rows[-1].ulid == cursor
    assert head(admin, "orders", 1) is None
    # Reading from the head finds only what comes later.
    publish(admin, "orders", {"i": 3}, partition=0)
    assert numbers(read_all(admin, "orders", 0, last)[0]) == [3]


def test_head_skips_an_uncommitted_event(migrated_dsn, admin):
    create_feed(admin, "orders", 1)
    publish(admin, "orders", {"i": 0}, partition=0)
    writer = connect(migrated_dsn)
    try:
        writer.execute("begin transaction")
        publish(writer, "orders", {"i": 1}, partition=0)
        admin.execute("set lock_timeout 10000")
        last = head(admin, "orders", 0)
        writer.execute("commit transaction")
    finally:
        writer.close()
    rows, _ = read_all(admin, "orders", 0, last)
    assert numbers(rows) == [1]
