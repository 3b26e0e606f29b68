-- One payment per order. `void_requested` is a tombstone: a void (inventory.rejected or
-- dispatch.failed) arrived before the order was authorised, so a late order.created is declined
-- without contacting the processor. The other statuses are the payment's public states.
CREATE TABLE IF NOT EXISTS payments (
    order_id          uuid        PRIMARY KEY,
    status            text        NOT NULL
        CHECK (status IN ('void_requested', 'authorized', 'declined', 'captured', 'voided')),
    -- null only for a tombstone (the amount is not known before order.created)
    amount_cents      bigint      CHECK (amount_cents >= 0),
    decline_reason    text,
    void_requested_at timestamptz,
    authorized_at     timestamptz,
    declined_at       timestamptz,
    captured_at       timestamptz,
    voided_at         timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payments_tombstone_has_no_amount
        CHECK ((status = 'void_requested') = (amount_cents IS NULL)),
    CONSTRAINT payments_declined_has_a_reason
        CHECK ((status = 'declined') = (decline_reason IS NOT NULL)),
    CONSTRAINT payments_captured_only_after_authorization
        CHECK (captured_at IS NULL OR authorized_at IS NOT NULL),
    CONSTRAINT payments_never_captured_and_voided
        CHECK (captured_at IS NULL OR voided_at IS NULL)
);
