-- zeh-mssql 0004: draining the outbox, reading a page, the head of a partition.

set ansi_nulls on;
set quoted_identifier on;
go

-- Internal: moves up to @max_rows committed outbox rows of one shard, lowest
-- order_sequence first, into changefeed.event with fresh ULIDs. The caller holds
-- the shard's exclusive application lock inside its transaction, so one drain
-- runs at a time per shard and its ULIDs come after every earlier drain's.
--
-- READPAST skips rows whose writer has not committed yet: they are moved by a
-- later drain, above everything moved now, instead of stalling this reader. It
-- needs READ COMMITTED or REPEATABLE READ, and READCOMMITTEDLOCK when the
-- database has READ_COMMITTED_SNAPSHOT on.
--
-- Only rows whose order_sequence was drawn before @up_to are moved, @up_to being
-- drawn from the sequence before the rows are scanned. A row this scan skips was
-- uncommitted after @up_to was drawn; a row it moves was drawn before @up_to; so
-- the writer of the moved row began before the skipped row's writer committed,
-- and the two transactions were concurrent: either order is allowed. Without the
-- bound, a transaction that began after a skipped one committed could be moved
-- first by a long scan.
create or alter procedure changefeed.move_outbox
    @feed_id int,
    @shard_id int,
    @max_rows int,
    @up_to bigint = null,
    @moved int = 0 output
as
begin
    set nocount on;

    declare @staged changefeed.staged_event;

    -- Below the 5,000 locks at which a statement's row locks escalate to a table
    -- lock, which would block every writer of the outbox until our commit.
    if @max_rows > 4000 set @max_rows = 4000;
    if @up_to is null set @up_to = next value for changefeed.outbox_sequence;

    delete o
    output
        deleted.order_sequence,
        deleted.shard_id,
        deleted.time_hint,
        deleted.event_type,
        deleted.headers,
        deleted.data
    into @staged (position, shard_id, time_hint, event_type, headers, data)
    from changefeed.outbox as o with (readpast, readcommittedlock)
    where
        o.feed_id = @feed_id
        and o.shard_id = @shard_id
        and o.order_sequence in (
            select top (@max_rows) q.order_sequence
            from changefeed.outbox as q with (readpast, readcommittedlock)
            where
                q.feed_id = @feed_id
                and q.shard_id = @shard_id
                and q.order_sequence < @up_to
            order by q.order_sequence
        );

    set @moved = @@rowcount;

    if @moved > 0
        exec changefeed.place_events @feed_id = @feed_id, @events = @staged;
end;
go

-- Internal: the exclusive application lock on one partition of a feed, which
-- drains take so that one drain runs at a time per partition. The lock belongs
-- to the caller's transaction, which must be open, and ends with it. A refused
-- lock is error 51012 (@caller starts the message); the transaction is left to
-- the caller, whose CATCH block rolls it back.
create or alter procedure changefeed.lock_partition
    @caller nvarchar(64),
    @feed nvarchar(128),
    @feed_id int,
    @partition int
as
begin
    set nocount on;

    declare @message nvarchar(2048);
    declare @lock_result int;
    declare @resource nvarchar(255) = concat(N'changefeed/', @feed_id, N'/', @partition);

    exec @lock_result = sys.sp_getapplock
        @Resource = @resource,
        @LockMode = 'Exclusive',
        @LockOwner = 'Transaction';

    -- 0 and 1 mean granted; -1 timeout (the session's LOCK_TIMEOUT), -2
    -- cancelled, -3 deadlock victim, -999 bad call. A refused applock does not
    -- roll the transaction back.
    if @lock_result < 0
    begin
        set @message = concat(
            @caller, N': could not lock partition ', @partition, N' of feed "',
            @feed, N'" for draining (sp_getapplock returned ', @lock_result, N')'
        );
        throw 51012, @message, 1;
    end;
end;
go

-- One page of a partition: the events after @cursor, in ULID order.
--
-- Result set 1: ulid, event_type, headers, data, time, ordered by ulid.
-- Result set 2: one row, next_cursor: where the next read continues, the last
-- ULID scanned (the input cursor when nothing was scanned).
--
-- Without a type filter a page holds up to @pagesize events. With one
-- (@event_types: a JSON array of type names, matched case-insensitively;
-- @exclude_event_types = 1 inverts it) the @pagesize events after the cursor are
-- scanned and the matching ones returned, so a page may be empty while
-- next_cursor moves on. Events without a type never match a name.
--
-- In outbox mode a reader that finds nothing new drains the outbox (unless
-- @drain = 0, for read-only replicas). Must be called outside a transaction:
-- the drain commits its own.
create or alter procedure changefeed.read_feed
    @feed nvarchar(128),
    @partition int,
    @cursor binary(16) = 0x00000000000000000000000000000000,
    @pagesize int = 1000,
    @event_types nvarchar(max) = null,
    @exclude_event_types bit = 0,
    @drain bit = 1
as
begin
    set nocount on;

    declare @message nvarchar(2048);
    declare @feed_id int;
    declare @partition_count int;
    declare @mode varchar(16);
    declare @window_end binary(16);
    declare @filtered bit = case when @event_types is null then 0 else 1 end;
    declare @exclude bit = coalesce(@exclude_event_types, 0);

    declare @types table (
        name nvarchar(128) collate Latin1_General_100_BIN2 not null primary key
    );

    -- Checked before XACT_ABORT is set: THROW honours XACT_ABORT, and the
    -- caller's transaction is not ours to roll back.
    if @@trancount > 0
    begin
        set @message = concat(
            N'changefeed.read_feed must be called outside a transaction (feed "',
            replace(@feed, N'%', N'%%'), N'", @@trancount ', @@trancount, N')'
        );
        throw 51005, @message, 1;
    end;

    -- Our drain transaction is rolled back on any error, a client timeout
    -- included; no statement may open an implicit transaction around it; and
    -- READPAST needs a locking isolation level. All three revert on return.
    set xact_abort on;
    set implicit_transactions off;
    set transaction isolation level read committed;

    exec changefeed.find_feed
        @caller = N'changefeed.read_feed',
        @feed = @feed,
        @feed_id = @feed_id output,
        @partition_count = @partition_count output,
        @mode = @mode output;

    exec changefeed.check_partition
        @caller = N'changefeed.read_feed',
        @feed = @feed,
        @partition = @partition,
        @partition_count = @partition_count;

    if @pagesize is null or @pagesize < 1
    begin
        set @message = concat(
            N'changefeed.read_feed: @pagesize must be a positive number, not ',
            coalesce(cast(@pagesize as nvarchar(11)), N'NULL'), N' (feed "', @feed, N'")'
        );
        throw 51011, @message, 1;
    end;

    if @filtered = 1
    begin
        if changefeed.is_json_of_strings(@event_types, 4) = 0
        begin
            set @message = concat(
                N'changefeed.read_feed: @event_types must be a JSON array of strings (feed "',
                @feed, N'")'
            );
            throw 51003, @message, 1;
        end;

        -- A name longer than event_type's 128 characters matches no event.
        insert into @types (name)
        select distinct lower(cast(v.value as nvarchar(128))) collate Latin1_General_100_BIN2
        from openjson(@event_types) as v
        where len(v.value) <= 128;
    end;

    set @cursor = coalesce(@cursor, 0x00000000000000000000000000000000);

    -- The window: the first @pagesize events after the cursor. Rows below the
    -- window's last ULID never appear later (new ULIDs are always above every
    -- committed one), so the page below and next_cursor agree.
    select @window_end = max(w.ulid)
    from (
        select top (@pagesize) e.ulid
        from changefeed.event as e
        where e.feed_id = @feed_id and e.shard_id = @partition and e.ulid > @cursor
        order by e.ulid
    ) as w;

    -- At the head of an outbox-mode partition: drain if committed rows wait.
    -- Nested IFs, because the conditions of one IF may be evaluated in any order
    -- and with @drain = 0 (a read-only replica) the outbox must not be read.
    if @window_end is null and @drain = 1 and @mode = 'outbox'
    begin
        if exists (
            select 1 from changefeed.outbox as o with (readpast, readcommittedlock)
            where o.feed_id = @feed_id and o.shard_id = @partition
        )
        begin
            begin try
                begin transaction;

                exec changefeed.lock_partition
                    @caller = N'changefeed.read_feed',
                    @feed = @feed,
                    @feed_id = @feed_id,
                    @partition = @partition;

                -- Another reader may have drained while this one waited for the lock.
                if not exists (
                    select 1 from changefeed.event as e
                    where e.feed_id = @feed_id and e.shard_id = @partition and e.ulid > @cursor
                )
                    exec changefeed.move_outbox
                        @feed_id = @feed_id,
                        @shard_id = @partition,
                        @max_rows = @pagesize;

                commit transaction;
            end try
            begin catch
                if @@trancount > 0 rollback transaction;
                throw;
            end catch;

            select @window_end = max(w.ulid)
            from (
                select top (@pagesize) e.ulid
                from changefeed.event as e
                where e.feed_id = @feed_id and e.shard_id = @partition and e.ulid > @cursor
                order by e.ulid
            ) as w;
        end;
    end;

    select
        e.ulid,
        e.event_type,
        e.headers,
        e.data,
        e.time
    from changefeed.event as e
    where
        e.feed_id = @feed_id
        and e.shard_id = @partition
        and e.ulid > @cursor
        and e.ulid <= @window_end
        and (
            @filtered = 0
            or (
                @exclude = 0
                and exists (
                    select 1 from @types as t
                    where t.name = lower(e.event_type) collate Latin1_General_100_BIN2
                )
            )
            or (
                @exclude = 1
                and not exists (
                    select 1 from @types as t
                    where t.name = lower(e.event_type) collate Latin1_General_100_BIN2
                )
            )
        )
    order by e.ulid;

    select coalesce(@window_end, @cursor) as next_cursor;
end;
go

-- The last ULID of a partition (NULL when it is empty), for the "_last" cursor.
-- In outbox mode it first drains every row committed before the call, and like
-- read_feed must then be called outside a transaction.
create or alter procedure changefeed.head
    @feed nvarchar(128),
    @partition int
as
begin
    set nocount on;
    -- No statement here may open an implicit transaction around the drains.
    set implicit_transactions off;

    declare @message nvarchar(2048);
    declare @feed_id int;
    declare @partition_count int;
    declare @mode varchar(16);
    declare @up_to bigint;
    declare @batch_size int = 4000;
    declare @moved int = 4000;

    exec changefeed.find_feed
        @caller = N'changefeed.head',
        @feed = @feed,
        @feed_id = @feed_id output,
        @partition_count = @partition_count output,
        @mode = @mode output;

    exec changefeed.check_partition
        @caller = N'changefeed.head',
        @feed = @feed,
        @partition = @partition,
        @partition_count = @partition_count;

    if @mode = 'outbox'
    begin
        if @@trancount > 0
        begin
            set @message = concat(
                N'changefeed.head must be called outside a transaction for outbox-mode feed "',
                @feed, N'" (@@trancount ', @@trancount, N')'
            );
            throw 51005, @message, 1;
        end;

        set xact_abort on;
        set transaction isolation level read committed;
        -- One bound for every batch: rows published after this call began are
        -- not waited for, so the loop ends however fast writers write.
        set @up_to = next value for changefeed.outbox_sequence;

        while @moved = @batch_size
        begin
            begin try
                begin transaction;

                exec changefeed.lock_partition
                    @caller = N'changefeed.head',
                    @feed = @feed,
                    @feed_id = @feed_id,
                    @partition = @partition;

                exec changefeed.move_outbox
                    @feed_id = @feed_id,
                    @shard_id = @partition,
                    @max_rows = @batch_size,
                    @up_to = @up_to,
                    @moved = @moved output;

                commit transaction;
            end try
            begin catch
                if @@trancount > 0 rollback transaction;
                throw;
            end catch;
        end;
    end;

    select max(e.ulid) as ulid
    from changefeed.event as e
    where e.feed_id = @feed_id and e.shard_id = @partition;
end;
go

grant execute on changefeed.read_feed to changefeed_reader;
grant execute on changefeed.head to changefeed_reader;
go
