"""The migration runner's database-free parts: GO splitting, files, checks, --print."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zeh_mssql import migrate as m
from zeh_mssql.migrate import (
    AppliedMigration,
    Batch,
    Migration,
    MigrationError,
    SplitError,
    load_migrations,
    pending_migrations,
    render_script,
    split_batches,
)

REPO_SQL = Path(__file__).resolve().parents[1] / "sql"


def texts(sql: str) -> list[str]:
    return [b.sql for b in split_batches(sql)]


# --- GO splitting ------------------------------------------------------------


def test_splits_on_go_lines_and_numbers_the_lines():
    assert split_batches("select 1\nGO\nselect 2\nselect 3\nGO\n\nselect 4") == [
        Batch("select 1", line=1),
        Batch("select 2\nselect 3", line=3),
        Batch("\nselect 4", line=6),
    ]


def test_last_batch_needs_no_go():
    assert texts("select 1") == ["select 1"]
    assert texts("select 1\nGO") == ["select 1"]


@pytest.mark.parametrize("go", ["GO", "go", "Go", "gO", "  GO", "\tgo\t ", "GO   "])
def test_go_is_case_insensitive_and_may_be_indented(go):
    assert texts(f"select 1\n{go}\nselect 2\n") == ["select 1", "select 2"]


@pytest.mark.parametrize(
    ("go", "repeat"), [("GO 3", 3), ("go\t12", 12), ("  GO 1  ", 1), ("GO 2 -- twice", 2)]
)
def test_repeat_count(go, repeat):
    batches = split_batches(f"insert t default values\n{go}\nselect 2")
    assert [(b.sql, b.repeat) for b in batches] == [
        ("insert t default values", repeat),
        ("select 2", 1),
    ]


def test_go_zero_is_refused():
    with pytest.raises(SplitError, match="line 2: GO needs a positive repeat count"):
        split_batches("select 1\nGO 0\n")


@pytest.mark.parametrize(
    "go",
    ["GO -- end of batch", "GO--x", "GO /* a */", "GO 2 /* a */ /* b */ -- c", "GO /* /**/ */"],
)
def test_comments_may_follow_go(go):
    assert texts(f"select 1\n{go}\nselect 2") == ["select 1", "select 2"]


@pytest.mark.parametrize(
    "line",
    [
        "select 1 GO",  # a statement on the GO line
        "GO select 1",
        "GO;",  # sqlcmd does not allow a terminator after GO
        "GOTO done",
        "GO x",
        "GO 3x",
        "GO3",
        "GO /* a comment that goes on",  # block comment not closed on the GO line
    ],
)
def test_go_not_alone_on_its_line_is_no_separator(line):
    sql = f"select 1\n{line}\nselect 2 */"
    assert texts(sql) == [sql]


@pytest.mark.parametrize(
    "sql",
    [
        "select 'a\nGO\nb'",
        "select N'a\ngo 2\nb'",
        "select 'it''s\nGO\n'' still'",
        "select 1 as [x\nGO\ny]",
        "select 1 as [a]]\nGO\nb]",
        'select 1 as "x\nGO\ny"',
        'select 1 as "a""\nGO\nb"',
        "/*\nGO\n*/ select 1",
        "/* outer /* inner */\nGO\nstill outer */ select 1",
        "select 1 -- GO\n-- GO\n",
    ],
)
def test_go_inside_literals_identifiers_and_comments_is_text(sql):
    assert texts(sql) == [sql.rstrip()]


@pytest.mark.parametrize(
    "sql",
    [
        "select 1 -- it's\nGO\nselect 2",  # a quote in a line comment opens nothing
        "/* it's */ select 1\nGO\nselect 2",  # nor in a block comment
        "select '/*'\nGO\nselect 2",  # comment markers in strings open nothing
        "select '--' \nGO\nselect 2",
        "select [a'b]\nGO\nselect 2",  # a quote inside a bracketed identifier
        'select "it\'s"\nGO\nselect 2',
        "/* a /* b */ c */ select 1\nGO\nselect 2",
    ],
)
def test_quote_and_comment_markers_in_other_contexts_open_nothing(sql):
    assert len(texts(sql)) == 2


def test_crlf_line_endings():
    assert split_batches("select 1\r\nGO 2\r\nselect 2\r\n") == [
        Batch("select 1", line=1, repeat=2),
        Batch("select 2", line=3),
    ]


def test_batches_of_only_whitespace_and_comments_are_dropped():
    sql = "-- header\n\nGO\n/* nothing */\nGO 5\nGO\nselect 1\n-- trailing\nGO\n  \n"
    assert split_batches(sql) == [Batch("select 1\n-- trailing", line=7)]


def test_line_numbers_count_newlines_inside_literals_and_comments():
    sql = "select 'a\nb\nc'\n/* x\ny */\nGO\nselect 2"
    assert [b.line for b in split_batches(sql)] == [1, 7]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("select 1\nGO\nselect 'abc\nGO\n", "line 3: string literal is never closed"),
        ("select [abc\n", "line 1: bracketed identifier is never closed"),
        ('select "abc\n', "line 1: quoted identifier is never closed"),
        ("select 1\n/* a /* b */\nGO\n", "line 2: comment /\\* is never closed"),
    ],
)
def test_unterminated_literal_or_comment(sql, message):
    with pytest.raises(SplitError, match=message):
        split_batches(sql)


# Fragments that build batches for the property test; none can form a GO line by
# itself, and every one is closed, so the split must give back exactly the batches.
def _pieces(*pieces: str, max_size: int = 10) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pieces), max_size=max_size).map("".join)


_inner = _pieces("a", "Z", " ", "\n", "GO", "go 2", "--", "/*", "*/", '"', "[", "]", ";", "'")
_comment_text = _pieces("a", " ", "\n", "GO", "\nGO\n", "'", '"', "[", "]", "-")
_fragment = st.one_of(
    st.sampled_from(["select 1", "insert t default values", "create table t (a int)", "@x"]),
    _inner.map(lambda s: "N'" + s.replace("'", "''") + "'"),
    _pieces("a", "\n", "GO", "'", "]").map(lambda s: "[" + s.replace("]", "]]") + "]"),
    _pieces("a", "\n", "GO", "'", '"').map(lambda s: '"' + s.replace('"', '""') + '"'),
    _comment_text.map(lambda s: "-- " + s.replace("\n", " ") + "\n"),
    _comment_text.map(lambda s: "/* " + s + " */"),
    _comment_text.map(lambda s: "/* " + s + " /* " + s + " */ " + s + " */"),
)
_batch = st.tuples(
    st.sampled_from(["select 0", "print 'x'"]),
    st.lists(st.tuples(st.sampled_from([" ", "\n"]), _fragment), max_size=6),
).map(lambda t: t[0] + "".join(sep + frag for sep, frag in t[1]))
_separator = st.tuples(
    st.sampled_from(["", " ", "\t "]),
    st.sampled_from(["GO", "go", "Go"]),
    st.sampled_from([None, 1, 2, 25]),
    st.sampled_from(["", " ", " -- done", " /* x */"]),
)


@given(st.lists(st.tuples(_batch, _separator), min_size=1, max_size=5))
def test_split_gives_back_the_batches_it_was_built_from(parts):
    script = ""
    for batch, (indent, go, count, tail) in parts:
        script += f"{batch}\n{indent}{go}{'' if count is None else f' {count}'}{tail}\n"
    assert [(b.sql, b.repeat) for b in split_batches(script)] == [
        (batch.rstrip(), 1 if count is None else count) for batch, (_, _, count, _) in parts
    ]


# --- migration files -----------------------------------------------------------


def test_migration_from_text():
    migration = Migration.from_text("0007_add_things.sql", "select 1\n")
    assert migration.version == 7
    assert migration.name == "0007_add_things.sql"
    assert migration.checksum == hashlib.sha256(b"select 1\n").digest()


def test_checksum_ignores_crlf_and_bom():
    lf = Migration.from_text("0001_a.sql", "select 1\nGO\n")
    crlf = Migration.from_text("0001_a.sql", "\ufeffselect 1\r\nGO\r\n")
    assert crlf.sql == lf.sql
    assert crlf.checksum == lf.checksum


def test_checksum_sees_any_other_change():
    assert (
        Migration.from_text("0001_a.sql", "select 1\n").checksum
        != Migration.from_text("0001_a.sql", "select 1 \n").checksum
    )


@pytest.mark.parametrize("name", ["1_a.sql", "0001-a.sql", "0001_.sql", "0001_a.txt", "abcd_a.sql"])
def test_bad_file_names(name):
    with pytest.raises(MigrationError, match=re.escape("look like 0001_name.sql")):
        Migration.from_text(name, "")


def test_version_zero_is_refused():
    with pytest.raises(MigrationError, match="start at 0001"):
        Migration.from_text("0000_a.sql", "")


def test_batches_error_names_the_file():
    with pytest.raises(SplitError, match=re.escape("0002_b.sql: line 1: string literal")):
        _ = Migration.from_text("0002_b.sql", "select 'x").batches


@pytest.mark.parametrize(
    ("sql", "transactional"),
    [
        ("select 1", True),
        ("-- zeh-mssql: no-transaction\nalter database current set x", False),
        ("-- about this file\n\n  -- ZEH-MSSQL: NO-TRANSACTION  \nselect 1", False),
        ("select 1\n-- zeh-mssql: no-transaction\n", True),  # only the header counts
    ],
)
def test_no_transaction_header(sql, transactional):
    assert Migration.from_text("0001_a.sql", sql).transactional is transactional


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_load_sorts_by_version_and_ignores_other_files(tmp_path):
    folder = write(
        tmp_path / "sql",
        {"0010_c.sql": "c", "0002_b.sql": "b", "0001_a.sql": "a", "README.md": "", "x.py": ""},
    )
    (folder / "__pycache__").mkdir()
    assert [x.name for x in load_migrations(folder)] == ["0001_a.sql", "0002_b.sql", "0010_c.sql"]


def test_load_refuses_badly_named_sql_files(tmp_path):
    folder = write(tmp_path / "sql", {"0001_a.sql": "a", "extra.sql": "b"})
    with pytest.raises(MigrationError, match=re.escape("extra.sql")):
        load_migrations(folder)


def test_load_refuses_duplicate_versions(tmp_path):
    folder = write(tmp_path / "sql", {"0001_a.sql": "a", "0001_b.sql": "b"})
    with pytest.raises(MigrationError, match="same version 0001"):
        load_migrations(folder)


def test_load_refuses_a_missing_directory(tmp_path):
    with pytest.raises(MigrationError, match="does not exist"):
        load_migrations(tmp_path / "nowhere")


def test_package_migrations_are_the_repository_sql_files():
    names = sorted(p.name for p in REPO_SQL.glob("*.sql"))
    assert names, "sql/ holds no migrations"
    assert [x.name for x in load_migrations()] == names


def test_wheel_layout_is_preferred(tmp_path, monkeypatch):
    # In a wheel the files are zeh_mssql/sql/*.sql inside the package.
    package = tmp_path / "zeh_mssql"
    write(package / "sql", {"0001_only.sql": "select 1"})
    monkeypatch.setattr(m.importlib.resources, "files", lambda _name: package)
    assert [x.name for x in load_migrations()] == ["0001_only.sql"]


@pytest.mark.parametrize("path", sorted(REPO_SQL.glob("*.sql")), ids=lambda p: p.name)
def test_package_migrations_split(path):
    migration = Migration.from_text(path.name, path.read_text(encoding="utf-8"))
    assert migration.batches
    assert all(b.repeat >= 1 and b.sql.strip() for b in migration.batches)


def test_first_migration_creates_the_log_table():
    first = load_migrations()[0]
    assert first.version == 1
    pattern = r"create\s+table\s+\[?changefeed\]?\.\[?migration_log\]?\s*\("
    assert re.search(pattern, first.sql, re.IGNORECASE)
    for column in ("version", "name", "checksum", "applied_at"):
        assert re.search(rf"\b{column}\b", first.sql), column


# --- checks against what the database recorded --------------------------------------

A = Migration.from_text("0001_a.sql", "select 1")
B = Migration.from_text("0002_b.sql", "select 2")
C = Migration.from_text("0003_c.sql", "select 3")


def applied(*migrations: Migration) -> list[AppliedMigration]:
    return [AppliedMigration(x.version, x.name, x.checksum) for x in migrations]


def test_nothing_applied_means_everything_pending():
    assert pending_migrations([A, B, C], []) == [A, B, C]


def test_applied_ones_are_skipped():
    assert pending_migrations([A, B, C], applied(A)) == [B, C]
    assert pending_migrations([A, B, C], applied(A, B, C)) == []


def test_edited_applied_file_is_refused():
    edited = Migration.from_text("0002_b.sql", "select 2 -- edited")
    with pytest.raises(
        MigrationError, match=re.escape("0002_b.sql was changed after it was applied")
    ):
        pending_migrations([A, edited, C], applied(A, B))


def test_applied_migration_missing_from_files_is_refused():
    with pytest.raises(MigrationError, match=r"0003 \(0003_c.sql\) is applied .* missing"):
        pending_migrations([A, B], applied(A, B, C))


def test_renamed_applied_file_is_refused():
    renamed = Migration.from_text("0002_bee.sql", "select 2")
    with pytest.raises(
        MigrationError, match=re.escape("applied as 0002_b.sql but the file is now")
    ):
        pending_migrations([A, renamed], applied(A, B))


def test_new_file_below_the_last_applied_one_is_refused():
    with pytest.raises(
        MigrationError, match=re.escape("0002_b.sql is not applied but sorts before")
    ):
        pending_migrations([A, B, C], applied(A, C))


# --- --print -------------------------------------------------------------------------


def test_script_applies_each_migration_once_in_a_transaction():
    repeated = Migration.from_text("0002_b.sql", "insert t default values\nGO 3\nselect 2\n")
    script = render_script([A, repeated])
    checksum_a = "0x" + A.checksum.hex().upper()
    assert script.startswith("-- zeh-mssql migrations")
    assert ":on error exit" in script
    assert (
        "IF EXISTS (SELECT 1 FROM changefeed.migration_log WHERE version = 1)\n"
        "        SET NOEXEC ON;" in script
    )
    assert f"WHERE version = 1 AND (checksum <> {checksum_a} OR name <> N'0001_a.sql'))" in script
    assert (
        "INSERT INTO changefeed.migration_log (version, name, checksum, applied_at)\n"
        f"VALUES (1, N'0001_a.sql', {checksum_a}, SYSUTCDATETIME());\nCOMMIT TRANSACTION;"
    ) in script
    assert "insert t default values\nGO 3\nselect 2\nGO\n" in script
    assert script.count("BEGIN TRANSACTION;") == 2
    assert script.count("SET NOEXEC OFF;") == 2
    assert script.index("0001_a.sql") < script.index("0002_b.sql")


def test_script_batches_split_back_into_the_migration_batches():
    repeated = Migration.from_text("0002_b.sql", "select 'GO'\nGO 3\n/* GO */ select 2\n")
    batches = split_batches(render_script([A, repeated]))
    wanted = [(b.sql, b.repeat) for x in (A, repeated) for b in x.batches]
    got = [(b.sql, b.repeat) for b in batches]
    positions = [got.index(item) for item in wanted]
    assert positions == sorted(positions)


def test_script_leaves_no_transaction_migrations_outside_one():
    plain = Migration.from_text("0001_a.sql", "-- zeh-mssql: no-transaction\nalter database x")
    script = render_script([plain])
    assert "BEGIN TRANSACTION" not in script
    assert "COMMIT" not in script
    assert "alter database x\nGO\nINSERT INTO changefeed.migration_log" in script


def test_script_refuses_sqlcmd_variable_syntax():
    with pytest.raises(MigrationError, match=r"0001_a.sql: '\$\(' cannot be written"):
        render_script([Migration.from_text("0001_a.sql", "select '$(x)'")])


def test_print_sql_writes_the_package_script():
    out = io.StringIO()
    m.print_sql(out)
    assert out.getvalue() == render_script(load_migrations())
    for migration in load_migrations():
        assert f"-- {migration.name} (sha256 {migration.checksum.hex()})" in out.getvalue()
