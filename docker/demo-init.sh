#!/bin/sh
# One-shot set-up of the compose demo, run by the "init" service in the server's
# image: the database, the migrations, a feed, a reader login for the server,
# and a few events (only while the feed is still empty, so restarts add none).
set -eu

python - <<'PY'
import os

import pyodbc

admin = pyodbc.connect(os.environ["ZEH_DEMO_MASTER_DSN"], autocommit=True, timeout=30)
admin.execute("if db_id(N'zeh_demo') is null create database zeh_demo")
PY

zeh-mssql migrate
zeh-mssql create-feed demo --partitions 4 --mode outbox

python - <<'PY'
import os

import pyodbc

# The server logs in as zeh_reader, a member of changefeed_reader only: that is
# all it needs (read_feed drains the outbox through ownership chaining).
password = os.environ["ZEH_DEMO_READER_PASSWORD"].replace("'", "''")
db = pyodbc.connect(os.environ["ZEH_MSSQL_DSN"], autocommit=True, timeout=30)
db.execute(
    "if not exists (select 1 from sys.server_principals where name = N'zeh_reader') "
    f"create login [zeh_reader] with password = N'{password}'"
)
db.execute(
    "if database_principal_id(N'zeh_reader') is null "
    "create user [zeh_reader] for login [zeh_reader]"
)
db.execute(
    "if is_rolemember(N'changefeed_reader', N'zeh_reader') = 0 "
    "alter role [changefeed_reader] add member [zeh_reader]"
)
PY

empty=$(python - <<'PY'
import os

import pyodbc

db = pyodbc.connect(os.environ["ZEH_MSSQL_DSN"], autocommit=True, timeout=30)
heads = [
    db.execute("exec changefeed.head @feed = N'demo', @partition = ?", p).fetchone()[0]
    for p in range(4)
]
print("yes" if all(head is None for head in heads) else "no")
PY
)

if [ "$empty" = yes ]; then
    for i in 1 2 3 4 5 6 7 8; do
        zeh-mssql publish demo --partition-key "customer-$((i % 3))" --type order.created \
            --header source=compose-demo \
            "{\"order\": $i, \"customer\": \"customer-$((i % 3))\", \"status\": \"created\"}"
    done
fi
echo "demo ready: curl 'http://localhost:8080/demo/feed/v1?n=4&cursor0=_first&cursor1=_first&cursor2=_first&cursor3=_first'"
