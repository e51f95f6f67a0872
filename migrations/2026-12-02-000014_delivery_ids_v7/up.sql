-- Delivery ids ordered by time (UUIDv7, as event, attempt and key ids already are). With
-- random ids (gen_random_uuid()) every new delivery went into a random leaf of
-- deliveries_pkey: once the index outgrows shared_buffers, each insert reads a page and
-- dirties it, and the first change of a page after a checkpoint writes all of it to the
-- WAL. Time-ordered ids all go to the index's right edge. PostgreSQL 15 has no uuidv7():
-- this is the usual construction (gen_random_uuid() with its first 48 bits replaced by the
-- Unix time in milliseconds and the version nibble set to 7).
CREATE FUNCTION herald_uuid7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;
