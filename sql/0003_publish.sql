-- zeh-mssql 0003: assigning ULIDs, and publishing events.

set ansi_nulls on;
set quoted_identifier on;
go

-- Internal: gives each staged event its ULID and writes it to changefeed.event.
-- Callers hold what makes them the only placer of these shards until they
-- commit: the drain holds the shard's application lock, and blocking-mode
-- publish takes the shard_state row locks below inside the writer's transaction.
--
-- A ULID is 48 bits of Unix time in ms, 16 random bits (together ulid_high) and
-- a 64-bit ulid_low, big-endian. Per shard, in position order:
-- * the time is the running maximum of time_hint, never below the shard's last
--   time (time never goes backwards; a late hint is pulled up);
-- * rows at the shard's last time continue from its stored ulid_high and
--   next_ulid_low; each later time starts a fresh random ulid_high and ulid_low;
-- * row i of a run at one time gets ulid_low + i.
-- So ULIDs strictly increase within a shard in assignment order.
create or alter procedure changefeed.place_events
    @feed_id int,
    @events changefeed.staged_event readonly
as
begin
    set nocount on;

    declare @epoch datetime2(3) = '1970-01-01T00:00:00';
    -- Clears bit 62 of a random ulid_low. Whatever its sign, adding fewer than
    -- 2^62 to it then neither overflows the bigint nor wraps its bytes, which
    -- compare as an unsigned big-endian number.
    declare @low_mask bigint = ~cast(0x4000000000000000 as bigint);
    declare @random varbinary(max) = 0x;
    declare @needed bigint;
    declare @shard int = -1;
    declare @message nvarchar(2048);

    declare @state table (
        shard_id int not null primary key,
        last_time datetime2(3) not null,
        ulid_high binary(8) not null,
        next_ulid_low bigint not null
    );

    declare @placed table (
        position bigint not null primary key,
        shard_id int not null,
        event_time datetime2(3) not null,
        run_number int not null, -- which (shard, time) run: picks the run's random bytes
        step bigint not null, -- offset of the row within its run
        continues bit not null, -- the run is at the shard's last time
        ulid_high binary(8) null,
        ulid_low bigint null
    );

    -- One shard at a time in ascending order, so that two writers whose batches
    -- share shards lock them in the same order and cannot deadlock here.
    while 1 = 1
    begin
        select @shard = min(e.shard_id)
        from @events as e
        where e.shard_id > @shard;

        if @shard is null break;

        insert into @state (shard_id, last_time, ulid_high, next_ulid_low)
        select
            s.shard_id,
            s.last_time,
            s.ulid_high,
            s.next_ulid_low
        from changefeed.shard_state as s with (updlock, holdlock)
        where s.feed_id = @feed_id and s.shard_id = @shard;
    end;

    if exists (
        select 1 from @events as e
        where not exists (select 1 from @state as s where s.shard_id = e.shard_id)
    )
    begin
        set @message = concat(
            N'changefeed.place_events: feed ', @feed_id, N' has no partition for some events'
        );
        throw 51002, @message, 1;
    end;

    with running as (
        select
            e.position,
            e.shard_id,
            max(e.time_hint) over (
                partition by e.shard_id
                order by e.position
                rows between unbounded preceding and current row
            ) as running_time
        from @events as e
    ),

    timed as (
        select
            r.position,
            r.shard_id,
            s.last_time,
            case
                when r.running_time > s.last_time then r.running_time else s.last_time
            end as event_time
        from running as r
        inner join @state as s on r.shard_id = s.shard_id
    )

    insert into @placed (position, shard_id, event_time, run_number, step, continues)
    select
        t.position,
        t.shard_id,
        t.event_time,
        dense_rank() over (order by t.shard_id, t.event_time) - 1,
        row_number() over (partition by t.shard_id, t.event_time order by t.position) - 1,
        case when t.event_time = t.last_time then 1 else 0 end
    from timed as t;

    -- 10 random bytes per run (2 for ulid_high, 8 for ulid_low), drawn in
    -- procedural statements so each draw is evaluated exactly once.
    select @needed = 10 * (max(p.run_number) + 1) from @placed as p;
    while datalength(@random) < @needed
    begin
        set @random = @random + crypt_gen_random(
            case
                when @needed - datalength(@random) > 8000 then 8000
                else @needed - datalength(@random)
            end
        );
    end;

    -- Integers convert to binary big-endian, truncated on the left: the last 6
    -- bytes of the bigint millisecond count are the 48-bit ULID time. binary(8)
    -- converts to bigint as the big-endian two's complement it is.
    update p
    set
        ulid_high = case
            when p.continues = 1 then s.ulid_high
            else cast(
                cast(datediff_big(millisecond, @epoch, p.event_time) as binary(6))
                + cast(substring(@random, p.run_number * 10 + 1, 2) as binary(2))
                as binary(8)
            )
        end,
        ulid_low = case
            when p.continues = 1 then s.next_ulid_low
            else
                cast(cast(substring(@random, p.run_number * 10 + 3, 8) as binary(8)) as bigint)
                & @low_mask
        end + p.step
    from @placed as p
    inner join @state as s on p.shard_id = s.shard_id;

    insert into changefeed.event (feed_id, shard_id, ulid, event_type, headers, data, time)
    select
        @feed_id,
        p.shard_id,
        p.ulid_high + cast(p.ulid_low as binary(8)),
        e.event_type,
        e.headers,
        e.data,
        p.event_time
    from @placed as p
    inner join @events as e on p.position = e.position;

    -- Each shard's last placed row is its highest ULID.
    update s
    set
        last_time = p.event_time,
        ulid_high = p.ulid_high,
        next_ulid_low = p.ulid_low + 1
    from changefeed.shard_state as s
    inner join @placed as p on s.shard_id = p.shard_id
    where
        s.feed_id = @feed_id
        and p.position = (
            select max(l.position) from @placed as l
            where l.shard_id = p.shard_id
        );
end;
go

-- Internal: 1 when @json is a JSON container of kind @container (5 an object,
-- 4 an array) whose members are all strings, else 0 (also for NULL or text
-- that is not JSON). Statements run in order here, and OPENJSON raises an error
-- on text that is not JSON, so the ISJSON test must come first: INLINE = OFF
-- keeps SQL Server 2019's scalar UDF inlining from merging the statements into
-- one expression evaluated in any order.
create or alter function changefeed.is_json_of_strings (
    @json nvarchar(max),
    @container tinyint
)
returns bit
with inline = off
as
begin
    if @json is null or isjson(@json) = 0
        return 0;
    -- Wrapped in [ ], a valid JSON text is one array element whose type is the
    -- container's kind.
    if exists (select 1 from openjson(N'[' + @json + N']') as t where t.[type] <> @container)
        return 0;
    if exists (select 1 from openjson(@json) as m where m.[type] <> 1)
        return 0;
    return 1;
end;
go

-- Internal: what is wrong with one event's arguments, for publish and
-- publish_batch alike: one row, error (a THROW number) and reason, both NULL
-- when nothing is. The first failing rule wins. Every condition is safe on any
-- input, so the order in which SQL Server evaluates them cannot raise an error.
create or alter function changefeed.event_problem (
    @partition int,
    @partition_key nvarchar(max),
    @partition_count int,
    @data nvarchar(max),
    @headers nvarchar(max)
)
returns table
as
return
select
    c.error,
    case c.error
        when 51008 then N'give exactly one of partition and partition_key'
        -- datalength counts UTF-16 bytes, trailing spaces included (len ignores them).
        when 51013 then N'partition key is longer than 450 characters'
        when 51002 then concat(
            N'partition ', @partition, N' is out of range; the feed has partitions 0 to ',
            @partition_count - 1
        )
        when 51003 then N'data is not a JSON object or array'
        when 51004 then N'headers must be a JSON object of string values'
    end as reason
from (
    select
        case
            when
                (@partition is null and @partition_key is null)
                or (@partition is not null and @partition_key is not null)
                then 51008
            when datalength(@partition_key) > 900 then 51013
            when @partition < 0 or @partition >= @partition_count then 51002
            -- ISJSON without a type argument accepts only objects and arrays.
            when @data is null or isjson(@data) = 0 then 51003
            when @headers is not null and changefeed.is_json_of_strings(@headers, 5) = 0
                then 51004
        end as error
) as c;
go

-- Publishes one event, normally inside the caller's transaction: it becomes
-- visible to readers when that transaction commits, and vanishes if it rolls
-- back. Give exactly one of @partition and @partition_key. @data must be a JSON
-- object or array; @headers null or a JSON object whose values are strings;
-- @time_hint (UTC) defaults to now and is capped at now.
--
-- outbox mode: one insert into changefeed.outbox; writers never wait on each
-- other. blocking mode: locks the shard's state row until the caller's
-- transaction ends and writes straight to changefeed.event.
--
-- On success the caller's transaction is neither committed nor rolled back; on
-- an error the error is raised and the transaction is left to the caller (whose
-- XACT_ABORT setting decides whether it is still committable).
create or alter procedure changefeed.publish
    @feed nvarchar(128),
    @data nvarchar(max),
    @partition int = null,
    -- max, not 450: a parameter silently truncates a longer argument, which
    -- would hash a different key; over 450 characters is refused below.
    @partition_key nvarchar(max) = null,
    @event_type nvarchar(128) = null,
    @headers nvarchar(max) = null,
    @time_hint datetime2(3) = null
as
begin
    set nocount on;

    declare @message nvarchar(2048);
    declare @feed_id int;
    declare @partition_count int;
    declare @mode varchar(16);
    declare @now datetime2(3) = sysutcdatetime();
    declare @own_transaction bit = case when @@trancount = 0 then 1 else 0 end;
    declare @error int;
    declare @reason nvarchar(400);
    declare @staged changefeed.staged_event;

    exec changefeed.find_feed
        @caller = N'changefeed.publish',
        @feed = @feed,
        @feed_id = @feed_id output,
        @partition_count = @partition_count output,
        @mode = @mode output;

    select @error = p.error, @reason = p.reason
    from changefeed.event_problem(@partition, @partition_key, @partition_count, @data, @headers)
        as p;

    if @error is not null
    begin
        set @message = concat(N'changefeed.publish: ', @reason, N' (feed "', @feed, N'")');
        throw @error, @message, 1;
    end;

    if @partition_key is not null
        set @partition = changefeed.partition_for_key(@partition_key, @partition_count);

    set @time_hint = case when @time_hint is null or @time_hint > @now then @now else @time_hint end;

    if @mode = 'outbox'
    begin
        insert into changefeed.outbox (
            feed_id, shard_id, order_sequence, time_hint, event_type, headers, data
        )
        values (
            @feed_id,
            @partition,
            next value for changefeed.outbox_sequence,
            @time_hint,
            @event_type,
            @headers,
            @data
        );
        return;
    end;

    insert into @staged (position, shard_id, time_hint, event_type, headers, data)
    values (1, @partition, @time_hint, @event_type, @headers, @data);

    -- The state update and the insert must be one transaction: open one when
    -- the caller has none. Only a transaction of our own is aborted on any error
    -- (a client timeout included, which no CATCH block sees).
    if @own_transaction = 1 set xact_abort on;

    begin try
        if @own_transaction = 1 begin transaction;
        exec changefeed.place_events @feed_id = @feed_id, @events = @staged;
        if @own_transaction = 1 commit transaction;
    end try
    begin catch
        if @own_transaction = 1 and @@trancount > 0 rollback transaction;
        throw;
    end catch;
end;
go

-- Publishes many events at once, all or none, in the order of their ordinal
-- (per partition). Same rules per row as changefeed.publish; an error names the
-- ordinal of the first bad row. Rows are written 4,000 at a time, below the
-- 5,000 locks at which one statement's row locks escalate to a table lock.
create or alter procedure changefeed.publish_batch
    @feed nvarchar(128),
    @events changefeed.event_batch readonly
as
begin
    set nocount on;

    declare @message nvarchar(2048);
    declare @feed_id int;
    declare @partition_count int;
    declare @mode varchar(16);
    declare @now datetime2(3) = sysutcdatetime();
    declare @own_transaction bit = case when @@trancount = 0 then 1 else 0 end;
    declare @ordinal int;
    declare @error int;
    declare @reason nvarchar(400);
    declare @count int;
    declare @first int = 1;
    declare @chunk_size int = 4000;
    declare @staged changefeed.staged_event;

    declare @prepared table (
        rn int not null primary key,
        ordinal int not null unique,
        shard_id int not null,
        time_hint datetime2(3) not null
    );

    exec changefeed.find_feed
        @caller = N'changefeed.publish_batch',
        @feed = @feed,
        @feed_id = @feed_id output,
        @partition_count = @partition_count output,
        @mode = @mode output;

    -- The first event (by ordinal) with a problem, and its first problem.
    select top (1)
        @ordinal = e.ordinal,
        @error = p.error,
        @reason = p.reason
    from @events as e
    cross apply changefeed.event_problem(
        e.[partition], e.partition_key, @partition_count, e.data, e.headers
    ) as p
    where p.error is not null
    order by e.ordinal;

    if @error is not null
    begin
        set @message = concat(
            N'changefeed.publish_batch: event ', @ordinal, N': ', @reason,
            N' (feed "', @feed, N'")'
        );
        throw @error, @message, 1;
    end;

    insert into @prepared (rn, ordinal, shard_id, time_hint)
    select
        row_number() over (order by e.ordinal),
        e.ordinal,
        coalesce(e.[partition], changefeed.partition_for_key(e.partition_key, @partition_count)),
        case when e.time_hint is null or e.time_hint > @now then @now else e.time_hint end
    from @events as e;

    set @count = @@rowcount;
    if @count = 0 return;

    -- All chunks commit together: open a transaction when the caller has none.
    if @own_transaction = 1 set xact_abort on;

    begin try
        if @own_transaction = 1 begin transaction;

        while @first <= @count
        begin
            if @mode = 'outbox'
            begin
                -- OVER (ORDER BY rn) makes the sequence follow the ordinals.
                insert into changefeed.outbox (
                    feed_id, shard_id, order_sequence, time_hint, event_type, headers, data
                )
                select
                    @feed_id,
                    p.shard_id,
                    next value for changefeed.outbox_sequence over (order by p.rn),
                    p.time_hint,
                    e.event_type,
                    e.headers,
                    e.data
                from @prepared as p
                inner join @events as e on p.ordinal = e.ordinal
                where p.rn >= @first and p.rn < @first + @chunk_size;
            end;
            else
            begin
                delete from @staged;

                insert into @staged (position, shard_id, time_hint, event_type, headers, data)
                select
                    p.rn,
                    p.shard_id,
                    p.time_hint,
                    e.event_type,
                    e.headers,
                    e.data
                from @prepared as p
                inner join @events as e on p.ordinal = e.ordinal
                where p.rn >= @first and p.rn < @first + @chunk_size;

                exec changefeed.place_events @feed_id = @feed_id, @events = @staged;
            end;

            set @first = @first + @chunk_size;
        end;

        if @own_transaction = 1 commit transaction;
    end try
    begin catch
        if @own_transaction = 1 and @@trancount > 0 rollback transaction;
        throw;
    end catch;
end;
go

grant execute on changefeed.publish to changefeed_writer;
grant execute on changefeed.publish_batch to changefeed_writer;
go
