-- zeh-mssql 0002: partition keys, creating and listing feeds.

set ansi_nulls on;
set quoted_identifier on;
go

-- The partition a key belongs to, out of @partition_count. The key's UTF-8 bytes
-- (a cast to varchar under a _UTF8 collation; 450 UTF-16 code units are at most
-- 1,350 UTF-8 bytes, far below varchar(8000)) are hashed with SHA-256; the first
-- 4 bytes of the digest, read as a big-endian unsigned 32-bit integer, are taken
-- modulo @partition_count. In Python:
--   int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4], "big") % n
-- Four zero bytes are prepended before the cast to bigint so that the integer is
-- read from exactly 8 big-endian bytes and can never come out negative.
create or alter function changefeed.partition_for_key (
    @partition_key nvarchar(450),
    @partition_count int
)
returns int
with schemabinding
as
begin
    return cast(
        cast(
            0x00000000 + substring(
                hashbytes(
                    'SHA2_256',
                    cast(@partition_key collate Latin1_General_100_BIN2_UTF8 as varchar(8000))
                ),
                1,
                4
            ) as bigint
        ) % @partition_count as int
    );
end;
go

-- Registers a feed with @partition_count partitions. Calling it again with the
-- same arguments does nothing; with different ones it fails (51006): a feed's
-- partitioning and mode are fixed for life, since consumers' cursors depend on
-- them. Names are 1-128 characters of A-Z a-z 0-9 _ . - starting with a letter
-- or digit (they appear in URL paths), compared case-sensitively.
create or alter procedure changefeed.create_feed
    @name nvarchar(128),
    @partition_count int,
    @mode varchar(16) = 'outbox'
as
begin
    set nocount on;

    declare @message nvarchar(2048);
    declare @own_transaction bit = case when @@trancount = 0 then 1 else 0 end;
    declare @feed_id int;
    declare @existing_count int;
    declare @existing_mode varchar(16);
    declare @shard int = 0;

    if
        @name is null
        or len(@name) = 0
        or replace(@name collate Latin1_General_100_BIN2, N'-', N'') like N'%[^A-Za-z0-9_.]%'
        or left(@name, 1) collate Latin1_General_100_BIN2 not like N'[A-Za-z0-9]'
    begin
        set @message = concat(
            N'changefeed.create_feed: bad feed name "', replace(@name, N'%', N'%%'),
            N'"; use 1-128 characters of A-Z a-z 0-9 _ . - starting with a letter or digit'
        );
        throw 51010, @message, 1;
    end;

    if @partition_count is null or @partition_count not between 1 and 4096
    begin
        set @message = concat(
            N'changefeed.create_feed: bad partition count ', coalesce(cast(@partition_count as nvarchar(11)), N'NULL'),
            N' for feed "', @name, N'"; it must be between 1 and 4096'
        );
        throw 51009, @message, 1;
    end;

    set @mode = lower(@mode);
    if @mode is null or @mode not in ('outbox', 'blocking')
    begin
        set @message = concat(
            N'changefeed.create_feed: mode must be ''outbox'' or ''blocking'' (feed "', @name, N'")'
        );
        throw 51007, @message, 1;
    end;

    -- Only a transaction of our own is aborted on any error (a client timeout
    -- included, which no CATCH block sees); a caller's transaction and its
    -- XACT_ABORT setting stay the caller's business.
    if @own_transaction = 1 set xact_abort on;

    begin try
        if @own_transaction = 1 begin transaction;

        -- updlock + holdlock: two sessions creating the same feed at once serialize
        -- here (the second one sees the first one's row) instead of racing to the
        -- unique constraint.
        select
            @feed_id = f.feed_id,
            @existing_count = f.partition_count,
            @existing_mode = f.mode
        from changefeed.feed as f with (updlock, holdlock)
        where f.name = @name;

        if @feed_id is null
        begin
            insert into changefeed.feed (name, partition_count, mode)
            values (@name, @partition_count, @mode);
            set @feed_id = scope_identity();

            while @shard < @partition_count
            begin
                insert into changefeed.shard_state (feed_id, shard_id, last_time, ulid_high, next_ulid_low)
                values (@feed_id, @shard, '1970-01-01T00:00:00', 0x0000000000000000, 1);
                set @shard = @shard + 1;
            end;
        end;
        else if @existing_count <> @partition_count or @existing_mode <> @mode
        begin
            set @message = concat(
                N'changefeed.create_feed: feed "', @name, N'" already exists with ',
                @existing_count, N' partitions in ', @existing_mode, N' mode, not ',
                @partition_count, N' partitions in ', @mode, N' mode'
            );
            throw 51006, @message, 1;
        end;

        if @own_transaction = 1 commit transaction;
    end try
    begin catch
        if @own_transaction = 1 and @@trancount > 0 rollback transaction;
        throw;
    end catch;
end;
go

-- Every feed, for servers that serve all of them.
create or alter procedure changefeed.list_feeds
as
begin
    set nocount on;

    select
        f.name,
        f.partition_count,
        f.mode
    from changefeed.feed as f
    order by f.name;
end;
go

-- Internal: the feed named @feed, for the procedures that take a feed name. An
-- unknown name is error 51001; @caller, the calling procedure's name, starts the
-- message. THROW ends the batch (or goes to the caller's caller's CATCH), so the
-- calling procedure never continues without a feed.
create or alter procedure changefeed.find_feed
    @caller nvarchar(64),
    @feed nvarchar(128),
    @feed_id int output,
    @partition_count int output,
    @mode varchar(16) output
as
begin
    set nocount on;

    declare @message nvarchar(2048);

    set @feed_id = null;

    select
        @feed_id = f.feed_id,
        @partition_count = f.partition_count,
        @mode = f.mode
    from changefeed.feed as f
    where f.name = @feed;

    -- THROW reserves % in messages; an unknown name may hold it, so it is doubled.
    -- (create_feed admits no %, so the names of existing feeds need no escaping.)
    if @feed_id is null
    begin
        set @message = concat(
            @caller, N': unknown feed "', replace(@feed, N'%', N'%%'), N'"'
        );
        throw 51001, @message, 1;
    end;
end;
go

-- Internal: error 51002 unless @partition is one of the @partition_count
-- partitions (0 to @partition_count - 1) of feed @feed, which find_feed found;
-- @caller starts the message.
create or alter procedure changefeed.check_partition
    @caller nvarchar(64),
    @feed nvarchar(128),
    @partition int,
    @partition_count int
as
begin
    set nocount on;

    declare @message nvarchar(2048);

    if @partition is null or @partition < 0 or @partition >= @partition_count
    begin
        set @message = concat(
            @caller, N': partition ', coalesce(cast(@partition as nvarchar(11)), N'NULL'),
            N' is out of range for feed "', @feed, N'", which has partitions 0 to ',
            @partition_count - 1
        );
        throw 51002, @message, 1;
    end;
end;
go

grant execute on changefeed.list_feeds to changefeed_reader;
go
