-- zeh-mssql 0001: the changefeed schema, its tables, table types and roles.
--
-- Every object belongs to schema changefeed, owned by dbo, and no object names
-- an owner of its own: the procedures and the tables then share one owner, so an
-- unbroken ownership chain lets a caller holding only EXECUTE on a procedure read
-- and write the tables through it, without any grant on the tables themselves.
--
-- Needs SQL Server 2019 or later (UTF-8 collations, used by partition keys) and a
-- database compatibility level of 130 or more (OPENJSON). Every statement may run
-- inside a transaction, so a runner may apply the whole file atomically.

set ansi_nulls on;
set quoted_identifier on;
go

create schema changefeed authorization dbo;
go

-- One row per applied migration file; the migration runner writes it.
create table changefeed.migration_log (
    version int not null,
    name nvarchar(256) not null,
    checksum binary(32) not null, -- SHA-256 of the file, as the runner computes it
    applied_at datetime2(3) not null,
    constraint pk_migration_log primary key clustered (version)
);

-- The feed registry. Names are compared exactly (BIN2) whatever the database
-- collation, because they end up in URL paths.
create table changefeed.feed (
    feed_id int identity (1, 1) not null,
    name nvarchar(128) collate Latin1_General_100_BIN2 not null,
    partition_count int not null,
    mode varchar(16) collate Latin1_General_100_BIN2 not null,
    created_at datetime2(3) not null
    constraint df_feed_created_at default (sysutcdatetime()),
    constraint pk_feed primary key clustered (feed_id),
    constraint uq_feed_name unique (name),
    constraint ck_feed_partition_count check (partition_count between 1 and 4096),
    constraint ck_feed_mode check (mode in ('outbox', 'blocking'))
);

-- Per (feed, shard): where the last ULID handed out stands. last_time is the time
-- component of that ULID, ulid_high its first 8 bytes (48-bit Unix ms + 2 random
-- bytes) and next_ulid_low the last 8 bytes the next ULID at the same time takes.
-- create_feed makes one row per partition, so a writer always finds its row to
-- lock. A new shard starts at the Unix epoch with next_ulid_low 1, so even an
-- event pinned to the epoch gets a ULID above the all-zero "_first" cursor.
create table changefeed.shard_state (
    feed_id int not null,
    shard_id int not null,
    last_time datetime2(3) not null,
    ulid_high binary(8) not null,
    next_ulid_low bigint not null,
    constraint pk_shard_state primary key clustered (feed_id, shard_id),
    constraint fk_shard_state_feed foreign key (feed_id)
    references changefeed.feed (feed_id)
);

-- The log. Rows are only ever inserted, always above every ULID of their shard.
-- No foreign key: the procedures check the feed, and a foreign key would make
-- every insert read changefeed.feed.
create table changefeed.event (
    feed_id int not null,
    shard_id int not null,
    ulid binary(16) not null,
    event_type nvarchar(128) null,
    headers nvarchar(max) null,
    data nvarchar(max) not null,
    time datetime2(3) not null,
    constraint pk_event primary key clustered (feed_id, shard_id, ulid)
    with (data_compression = page),
    constraint ck_event_data_is_json check (isjson(data) = 1),
    constraint ck_event_headers_is_json check (headers is null or isjson(headers) = 1)
);

-- Outbox-mode writers insert here and nowhere else. order_sequence comes from a
-- sequence, so a transaction that begins after another one committed always
-- draws higher numbers than it did.
create sequence changefeed.outbox_sequence as bigint
start with 1
increment by 1
no cycle
cache 100;

-- Readers drain this table with READPAST, which skips row locks but waits on
-- page and table locks. So page locks are disallowed on the clustered index, and
-- no statement of ours touches 5,000 outbox rows at once (publish_batch inserts,
-- and the drain deletes, in chunks below that), which is the count at which SQL
-- Server tries to escalate a statement's row locks to a table lock. A writer's
-- open transaction therefore holds only row locks here and never stalls a reader.
-- There is no foreign key and no secondary index: READPAST deletes may block on
-- reading either.
create table changefeed.outbox (
    feed_id int not null,
    shard_id int not null,
    order_sequence bigint not null,
    time_hint datetime2(3) not null,
    event_type nvarchar(128) null,
    headers nvarchar(max) null,
    data nvarchar(max) not null,
    constraint pk_outbox primary key clustered (feed_id, shard_id, order_sequence)
    with (allow_page_locks = off, optimize_for_sequential_key = on)
);
go

-- The table-valued parameter of changefeed.publish_batch. ordinal fixes the
-- order of the events (within each partition they are logged in ordinal order);
-- give exactly one of partition and partition_key per row. partition_key is
-- nvarchar(max) so that a key over 450 characters is refused (51013) rather
-- than silently cut to a shorter key that hashes elsewhere.
create type changefeed.event_batch as table (
    ordinal int not null primary key,
    [partition] int null,
    partition_key nvarchar(max) null,
    event_type nvarchar(128) null,
    headers nvarchar(max) null,
    data nvarchar(max) null,
    time_hint datetime2(3) null
);
go

-- Internal: events on their way into changefeed.event, handed from the outbox
-- drain and from blocking-mode publish to changefeed.place_events. position
-- orders the events within their shard.
create type changefeed.staged_event as table (
    position bigint not null primary key,
    shard_id int not null,
    time_hint datetime2(3) not null,
    event_type nvarchar(128) null,
    headers nvarchar(max) null,
    data nvarchar(max) not null
);
go

create role changefeed_reader authorization dbo;
create role changefeed_writer authorization dbo;

-- Declaring a variable of a table type needs EXECUTE on the type. Writers declare
-- changefeed.event_batch themselves; both roles run procedures that declare
-- changefeed.staged_event. Neither grant gives access to any data.
grant execute on type::changefeed.event_batch to changefeed_writer;
grant execute on type::changefeed.staged_event to changefeed_reader;
grant execute on type::changefeed.staged_event to changefeed_writer;
go
