-- Sequenced dead letters: while consumer C has dead-lettered an event of order X (the head),
-- C's later events of X are parked here instead of being handled, and handled in stream order
-- once the hold is released (the head redriven successfully, or a `release` control message).
CREATE TABLE IF NOT EXISTS dead_letter_holds (
    consumer      text        NOT NULL,
    order_id      uuid        NOT NULL,
    head_event_id uuid        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, order_id)
);

CREATE TABLE IF NOT EXISTS parked_messages (
    id         bigserial   PRIMARY KEY,
    consumer   text        NOT NULL,
    order_id   uuid        NOT NULL,
    event_id   uuid        NOT NULL,
    -- position in the stream the message came from (events, or replay for a replayed one)
    stream_seq bigint      NOT NULL,
    subject    text        NOT NULL,
    headers    jsonb       NOT NULL,
    payload    bytea       NOT NULL,
    parked_at  timestamptz NOT NULL DEFAULT now()
);

-- release: one (consumer, order)'s parked messages in stream order
CREATE INDEX IF NOT EXISTS parked_messages_release_idx
    ON parked_messages (consumer, order_id, stream_seq);
