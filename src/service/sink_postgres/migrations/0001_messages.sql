-- secchan PostgreSQL sink, schema version 1: one row per message a device sent
-- (docs/deployment.md). The primary key is what makes delivery exactly-once: every server
-- instance inserts with ON CONFLICT DO NOTHING, and acknowledges only after the commit.
CREATE TABLE secchan_messages (
    -- The device key's fingerprint (SHA256:...); '' for an anonymous device.
    fingerprint   text        NOT NULL,
    -- The device's stream (protocol.md section 11.1): 8 random bytes.
    stream        bytea       NOT NULL CHECK (octet_length(stream) = 8),
    -- The message's position in its stream. A sequence number is 64 bits unsigned; those of
    -- 2^63 and above (which no device reaches by counting) are stored as negative numbers.
    seq           bigint      NOT NULL,
    -- The name the server's authorized-devices file or registry gives the device.
    device        text        NOT NULL,
    -- When the server received the message.
    received_at   timestamptz NOT NULL,
    -- Key-exchange suite and AEAD of the session it came in.
    suite         text        NOT NULL,
    aead          text        NOT NULL,
    -- The device's address (TCP, as the server saw it) or MQTT session.
    peer          text        NOT NULL,
    -- The message: as jsonb if it is JSON, else as bytes.
    payload       jsonb,
    payload_bytes bytea,
    CHECK ((payload IS NULL) <> (payload_bytes IS NULL)),
    PRIMARY KEY (fingerprint, stream, seq)
);
-- Messages arrive roughly in time order: a BRIN index finds a time range at little cost to
-- inserts.
CREATE INDEX secchan_messages_received_at ON secchan_messages USING brin (received_at);
