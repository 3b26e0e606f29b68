-- A parked message that failed while its order was released becomes the head of a new hold and
-- is owed a dead letter (published after commit). The dead letter's reason and error are kept
-- here until it is published and the row deleted, so a failed publish is retried: a hold whose
-- head has no dead letter could never be redriven or discarded.
ALTER TABLE parked_messages
    ADD COLUMN IF NOT EXISTS dead_letter_reason  text,
    ADD COLUMN IF NOT EXISTS dead_letter_error   text,
    ADD COLUMN IF NOT EXISTS dead_letter_owed_at timestamptz;

CREATE INDEX IF NOT EXISTS parked_messages_owed_idx
    ON parked_messages (dead_letter_owed_at) WHERE dead_letter_owed_at IS NOT NULL;
