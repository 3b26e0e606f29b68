//! The order service's decisions, as pure functions without I/O: validating a new order, the
//! idempotency key and the customer, the order's deadline, how each saga event moves the status
//! read model (forward-only by rank, failures final), whether a cancel may be requested, and how
//! often the deadline timer looks for overdue orders.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use jwl_events::{
    CancelReason, CourierId, DispatchFailureReason, EventData, GeoError, GeoPoint, LineItem,
    MAX_TEXT_CHARS, WaybillId,
};
use serde::{Deserialize, Serialize};

/// Most lines an order may have.
pub const MAX_ITEMS: usize = 50;
/// Longest SKU, in characters.
pub const MAX_SKU_CHARS: usize = 64;
/// Largest quantity of one line.
pub const MAX_QTY: i64 = 1000;
/// Largest unit price, in cents.
pub const MAX_UNIT_PRICE_CENTS: i64 = 100_000_000;
/// Longest payment token, in characters.
pub const MAX_PAYMENT_TOKEN_CHARS: usize = 128;
/// Longest `Idempotency-Key`, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// Most often the deadline timer runs.
const SWEEP_PERIOD_MAX: Duration = Duration::from_secs(1);
/// Least time between two runs of the deadline timer, however short the order deadline.
const SWEEP_PERIOD_MIN: Duration = Duration::from_millis(10);

/// The body of `POST /v1/orders`, as sent. Serialising it again gives its canonical form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// The lines, 1 to 50.
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<LineItemRequest>,
    pub pickup: PointRequest,
    pub dropoff: PointRequest,
    /// The card token (the simulated processor declines `tok_decline`).
    #[schema(min_length = 1, max_length = 128)]
    pub payment_token: String,
}

/// One line of an [`OrderRequest`], unchecked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineItemRequest {
    /// 1–64 characters of `[A-Za-z0-9._-]`.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    #[schema(minimum = 1, maximum = 1000)]
    pub qty: i64,
    /// Integer cents.
    #[schema(minimum = 1, maximum = 100_000_000)]
    pub unit_price_cents: i64,
}

/// A position of an [`OrderRequest`], unchecked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PointRequest {
    #[schema(minimum = -90, maximum = 90)]
    pub lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    pub lon: f64,
}

/// An [`OrderRequest`] that passed [`validate_order`], with its amount.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidOrder {
    pub items: Vec<LineItem>,
    /// Σ qty × unit_price_cents.
    pub amount_cents: i64,
    pub pickup: GeoPoint,
    pub dropoff: GeoPoint,
    pub payment_token: String,
}

/// A request value that breaks a rule: `items[2].qty: must be in 1..=1000, is 0`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path of the value at fault (`items[2].qty`, `pickup.lat`, `Idempotency-Key`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks a new order and computes its amount. The first value at fault is named.
pub fn validate_order(request: &OrderRequest) -> Result<ValidOrder, FieldError> {
    let count = request.items.len();
    if count == 0 || count > MAX_ITEMS {
        return Err(FieldError::new(
            "items",
            format!("must have 1..={MAX_ITEMS} lines, has {count}"),
        ));
    }
    let items = request
        .items
        .iter()
        .enumerate()
        .map(|(index, item)| validate_item(&format!("items[{index}]"), item))
        .collect::<Result<Vec<_>, _>>()?;
    let amount_cents = LineItem::total_cents(&items)
        .ok_or_else(|| FieldError::new("items", "the order total does not fit in 64-bit cents"))?;
    let pickup = validate_point("pickup", request.pickup)?;
    let dropoff = validate_point("dropoff", request.dropoff)?;
    let token_chars = request.payment_token.chars().count();
    if token_chars == 0 || token_chars > MAX_PAYMENT_TOKEN_CHARS {
        return Err(FieldError::new(
            "payment_token",
            format!("must be 1..={MAX_PAYMENT_TOKEN_CHARS} characters, is {token_chars}"),
        ));
    }
    Ok(ValidOrder {
        items,
        amount_cents,
        pickup,
        dropoff,
        payment_token: request.payment_token.clone(),
    })
}

fn validate_item(field: &str, item: &LineItemRequest) -> Result<LineItem, FieldError> {
    let sku_chars = item.sku.chars().count();
    if sku_chars == 0 || sku_chars > MAX_SKU_CHARS {
        return Err(FieldError::new(
            format!("{field}.sku"),
            format!("must be 1..={MAX_SKU_CHARS} characters, is {sku_chars}"),
        ));
    }
    if let Some(bad) = item.sku.chars().find(|c| !is_sku_char(*c)) {
        return Err(FieldError::new(
            format!("{field}.sku"),
            format!("may only contain A-Z, a-z, 0-9, '.', '_' and '-', found {bad:?}"),
        ));
    }
    let qty = u32::try_from(item.qty)
        .ok()
        .filter(|qty| (1..=MAX_QTY).contains(&i64::from(*qty)))
        .ok_or_else(|| {
            FieldError::new(
                format!("{field}.qty"),
                format!("must be in 1..={MAX_QTY}, is {}", item.qty),
            )
        })?;
    if !(1..=MAX_UNIT_PRICE_CENTS).contains(&item.unit_price_cents) {
        return Err(FieldError::new(
            format!("{field}.unit_price_cents"),
            format!(
                "must be in 1..={MAX_UNIT_PRICE_CENTS}, is {}",
                item.unit_price_cents
            ),
        ));
    }
    Ok(LineItem {
        sku: item.sku.clone(),
        qty,
        unit_price_cents: item.unit_price_cents,
    })
}

fn is_sku_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn validate_point(field: &str, point: PointRequest) -> Result<GeoPoint, FieldError> {
    GeoPoint::new(point.lat, point.lon).map_err(|error| {
        let axis = match error {
            GeoError::Latitude(_) => "lat",
            GeoError::Longitude(_) => "lon",
        };
        FieldError::new(format!("{field}.{axis}"), error.to_string())
    })
}

/// Checks an `Idempotency-Key` header value: 1..=255 characters.
pub fn validate_idempotency_key(key: &str) -> Result<(), FieldError> {
    let chars = key.chars().count();
    if chars == 0 || chars > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(FieldError::new(
            "Idempotency-Key",
            format!("must be 1..={MAX_IDEMPOTENCY_KEY_CHARS} characters, is {chars}"),
        ));
    }
    Ok(())
}

/// Checks that a token subject can own orders: the event catalogue carries `customer_id` as
/// 1..=256 characters.
pub fn validate_customer_id(subject: &str) -> Result<(), FieldError> {
    let chars = subject.chars().count();
    if chars == 0 || chars > MAX_TEXT_CHARS {
        return Err(FieldError::new(
            "sub",
            format!("a customer id must be 1..={MAX_TEXT_CHARS} characters, is {chars}"),
        ));
    }
    Ok(())
}

/// The canonical text of a request body, for comparing two requests under one idempotency key:
/// fixed field order, no whitespace, numbers in their shortest form.
pub fn canonical_request(request: &OrderRequest) -> String {
    // Plain structs of strings and numbers always serialise; JSON cannot carry non-finite
    // floats, so none reach this.
    serde_json::to_string(request).unwrap_or_default()
}

/// When an order created at `created` must be terminal: `created + order_deadline`, at
/// microsecond precision (like `timestamptz` and event times); `None` if out of range.
pub fn deadline_after(created: DateTime<Utc>, order_deadline: Duration) -> Option<DateTime<Utc>> {
    let delta = TimeDelta::from_std(order_deadline).ok()?;
    created
        .checked_add_signed(delta)
        .map(|deadline| deadline.trunc_subsecs(6))
}

/// How long the deadline timer waits between runs: a quarter of the order deadline, between
/// 10 ms and 1 s.
pub fn deadline_sweep_period(order_deadline: Duration) -> Duration {
    (order_deadline / 4).clamp(SWEEP_PERIOD_MIN, SWEEP_PERIOD_MAX)
}

/// Where an order stands, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Pending,
    Paid,
    Reserved,
    WaybillCreated,
    Dispatched,
    Delivered,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    /// Every status.
    pub const ALL: [OrderStatus; 8] = [
        OrderStatus::Pending,
        OrderStatus::Paid,
        OrderStatus::Reserved,
        OrderStatus::WaybillCreated,
        OrderStatus::Dispatched,
        OrderStatus::Delivered,
        OrderStatus::Rejected,
        OrderStatus::Cancelled,
    ];

    /// The wire and database name: `"pending"`, `"waybill_created"`, …
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Reserved => "reserved",
            OrderStatus::WaybillCreated => "waybill_created",
            OrderStatus::Dispatched => "dispatched",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// The status named `name`.
    pub fn parse(name: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Position on the happy path (`pending` 0 … `delivered` 5); `None` for the failures
    /// `rejected` and `cancelled`, which are off the path.
    pub const fn progress_rank(self) -> Option<u8> {
        match self {
            OrderStatus::Pending => Some(0),
            OrderStatus::Paid => Some(1),
            OrderStatus::Reserved => Some(2),
            OrderStatus::WaybillCreated => Some(3),
            OrderStatus::Dispatched => Some(4),
            OrderStatus::Delivered => Some(5),
            OrderStatus::Rejected | OrderStatus::Cancelled => None,
        }
    }

    /// Terminal for the API: the order can no longer be cancelled and the deadline no longer
    /// applies (`dispatched`, `delivered`, `rejected`, `cancelled`).
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Dispatched
                | OrderStatus::Delivered
                | OrderStatus::Rejected
                | OrderStatus::Cancelled
        )
    }

    /// Whether a failure (`payment.declined`, `inventory.rejected`, `dispatch.failed`) still
    /// changes this status: only before the order is dispatched and while it has not failed.
    const fn can_fail(self) -> bool {
        !self.is_terminal()
    }
}

/// Why an order is `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancelledReason {
    /// Inventory could not reserve every line.
    OutOfStock,
    /// Dispatch found no courier before its deadline.
    NoCourier,
    /// The customer cancelled.
    Customer,
    /// The order deadline passed.
    Deadline,
}

impl CancelledReason {
    /// Every reason.
    pub const ALL: [CancelledReason; 4] = [
        CancelledReason::OutOfStock,
        CancelledReason::NoCourier,
        CancelledReason::Customer,
        CancelledReason::Deadline,
    ];

    /// The wire and database name: `"out_of_stock"`, `"no_courier"`, `"customer"`, `"deadline"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CancelledReason::OutOfStock => "out_of_stock",
            CancelledReason::NoCourier => "no_courier",
            CancelledReason::Customer => "customer",
            CancelledReason::Deadline => "deadline",
        }
    }

    /// The reason named `name`.
    pub fn parse(name: &str) -> Option<CancelledReason> {
        CancelledReason::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
    }
}

impl From<CancelReason> for CancelledReason {
    fn from(reason: CancelReason) -> Self {
        match reason {
            CancelReason::Customer => CancelledReason::Customer,
            CancelReason::Deadline => CancelledReason::Deadline,
        }
    }
}

impl From<DispatchFailureReason> for CancelledReason {
    fn from(reason: DispatchFailureReason) -> Self {
        match reason {
            DispatchFailureReason::NoCourier => CancelledReason::NoCourier,
            DispatchFailureReason::Customer => CancelledReason::Customer,
            DispatchFailureReason::Deadline => CancelledReason::Deadline,
        }
    }
}

/// The part of an order the saga's events change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadModelState {
    pub status: OrderStatus,
    /// Set exactly when `status` is `cancelled`.
    pub reason: Option<CancelledReason>,
    pub waybill_id: Option<WaybillId>,
    pub courier_id: Option<CourierId>,
}

/// What an event does to the status.
enum StatusEffect {
    /// Moves the order forward to this happy-path status.
    Advance(OrderStatus),
    /// Ends the order as `rejected`.
    Reject,
    /// Ends the order as `cancelled` for this reason.
    Cancel(CancelledReason),
    /// Leaves the status alone (compensations, courier assignment, the order's own events).
    Keep,
}

fn status_effect(event: &EventData) -> StatusEffect {
    match event {
        EventData::PaymentAuthorized(_) => StatusEffect::Advance(OrderStatus::Paid),
        EventData::InventoryReserved(_) => StatusEffect::Advance(OrderStatus::Reserved),
        EventData::WaybillCreated(_) => StatusEffect::Advance(OrderStatus::WaybillCreated),
        EventData::PaymentCaptured(_) => StatusEffect::Advance(OrderStatus::Dispatched),
        EventData::Delivered(_) => StatusEffect::Advance(OrderStatus::Delivered),
        EventData::PaymentDeclined(_) => StatusEffect::Reject,
        EventData::InventoryRejected(_) => StatusEffect::Cancel(CancelledReason::OutOfStock),
        EventData::DispatchFailed(failed) => StatusEffect::Cancel(failed.reason.into()),
        EventData::OrderCreated(_)
        | EventData::OrderCancelRequested(_)
        | EventData::PaymentVoided(_)
        | EventData::InventoryReleased(_)
        | EventData::WaybillCancelled(_)
        | EventData::CourierAssigned(_) => StatusEffect::Keep,
    }
}

/// The waybill an event names, if any.
fn waybill_of(event: &EventData) -> Option<WaybillId> {
    match event {
        EventData::WaybillCreated(e) => Some(e.waybill_id),
        EventData::WaybillCancelled(e) => Some(e.waybill_id),
        EventData::CourierAssigned(e) => Some(e.waybill_id),
        EventData::DispatchFailed(e) => Some(e.waybill_id),
        EventData::Delivered(e) => Some(e.waybill_id),
        _ => None,
    }
}

/// The courier an event names, if any.
fn courier_of(event: &EventData) -> Option<&CourierId> {
    match event {
        EventData::CourierAssigned(e) => Some(&e.courier_id),
        EventData::Delivered(e) => Some(&e.courier_id),
        _ => None,
    }
}

/// The read model after `event`, whatever order events arrive in:
/// - happy-path statuses only move forward by [`OrderStatus::progress_rank`] (a late
///   `payment.authorized` after `payment.captured` changes nothing);
/// - `payment.declined` → `rejected`, `inventory.rejected` → `cancelled`/`out_of_stock`,
///   `dispatch.failed` → `cancelled` with its reason, but only while the order is not terminal;
///   once `rejected` or `cancelled` the status never changes, and `dispatched` only moves on to
///   `delivered`;
/// - the first waybill and courier an event names are kept, whatever the status.
pub fn apply_event(state: &ReadModelState, event: &EventData) -> ReadModelState {
    let mut next = state.clone();
    match status_effect(event) {
        StatusEffect::Advance(target) => {
            if let (Some(current), Some(wanted)) =
                (state.status.progress_rank(), target.progress_rank())
                && wanted > current
            {
                next.status = target;
            }
        }
        StatusEffect::Reject if state.status.can_fail() => {
            next.status = OrderStatus::Rejected;
        }
        StatusEffect::Cancel(reason) if state.status.can_fail() => {
            next.status = OrderStatus::Cancelled;
            next.reason = Some(reason);
        }
        StatusEffect::Reject | StatusEffect::Cancel(_) | StatusEffect::Keep => {}
    }
    if next.waybill_id.is_none() {
        next.waybill_id = waybill_of(event);
    }
    if next.courier_id.is_none() {
        next.courier_id = courier_of(event).cloned();
    }
    next
}

/// What `POST /v1/orders/{id}/cancel` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelDecision {
    /// Emit `order.cancel_requested` now.
    Request,
    /// A cancellation was already requested (by the customer or the deadline): accept again,
    /// emit nothing.
    AlreadyRequested,
    /// The order is terminal: refuse.
    Refuse,
}

/// Decides a customer's cancel of an order in `status`.
pub fn decide_cancel(status: OrderStatus, cancel_already_requested: bool) -> CancelDecision {
    if status.is_terminal() {
        CancelDecision::Refuse
    } else if cancel_already_requested {
        CancelDecision::AlreadyRequested
    } else {
        CancelDecision::Request
    }
}

#[cfg(test)]
mod tests {
    use jwl_events::{
        CourierAssigned, Delivered, DispatchFailed, InventoryRejected, InventoryReleased,
        InventoryReserved, OrderId, PaymentAuthorized, PaymentCaptured, PaymentDeclined,
        PaymentVoided, WaybillCancelled, WaybillCreated,
    };

    use super::*;

    fn line(sku: &str, qty: i64, unit_price_cents: i64) -> LineItemRequest {
        LineItemRequest {
            sku: sku.to_owned(),
            qty,
            unit_price_cents,
        }
    }

    fn request() -> OrderRequest {
        OrderRequest {
            items: vec![
                line("TEA-LONGJING_250g.v2", 2, 12800),
                line("MOONCAKE-6", 1, 6600),
            ],
            pickup: PointRequest {
                lat: 31.2304,
                lon: 121.4737,
            },
            dropoff: PointRequest {
                lat: 31.2243,
                lon: 121.4768,
            },
            payment_token: "tok_ok".to_owned(),
        }
    }

    fn field_of(request: &OrderRequest) -> String {
        validate_order(request).unwrap_err().field
    }

    #[test]
    fn a_valid_order_gets_its_amount() {
        let order = validate_order(&request()).unwrap();
        assert_eq!(order.amount_cents, 2 * 12800 + 6600);
        assert_eq!(order.items.len(), 2);
        assert_eq!(order.items[0].qty, 2);
        assert_eq!(order.pickup, GeoPoint::new(31.2304, 121.4737).unwrap());
        assert_eq!(order.payment_token, "tok_ok");
    }

    #[test]
    fn item_count_is_bounded() {
        let mut r = request();
        r.items.clear();
        assert_eq!(field_of(&r), "items");
        r.items = vec![line("A", 1, 1); MAX_ITEMS];
        assert!(validate_order(&r).is_ok());
        r.items.push(line("A", 1, 1));
        assert_eq!(field_of(&r), "items");
    }

    #[test]
    fn sku_length_and_alphabet_are_checked() {
        let mut r = request();
        r.items[1].sku = String::new();
        assert_eq!(field_of(&r), "items[1].sku");
        r.items[1].sku = "x".repeat(MAX_SKU_CHARS);
        assert!(validate_order(&r).is_ok());
        r.items[1].sku = "x".repeat(MAX_SKU_CHARS + 1);
        assert_eq!(field_of(&r), "items[1].sku");
        for bad in ["a b", "a/b", "茶", "a+b"] {
            r.items[1].sku = bad.to_owned();
            assert_eq!(field_of(&r), "items[1].sku", "{bad}");
        }
    }

    #[test]
    fn qty_and_price_ranges_are_checked() {
        let mut r = request();
        r.items.push(line("C", 0, 1));
        assert_eq!(field_of(&r), "items[2].qty");
        for qty in [-1, MAX_QTY + 1, i64::from(u32::MAX) + 1] {
            r.items[2].qty = qty;
            assert_eq!(field_of(&r), "items[2].qty", "{qty}");
        }
        r.items[2].qty = MAX_QTY;
        assert!(validate_order(&r).is_ok());
        for price in [0, -5, MAX_UNIT_PRICE_CENTS + 1] {
            r.items[2].unit_price_cents = price;
            assert_eq!(field_of(&r), "items[2].unit_price_cents", "{price}");
        }
        r.items[2].unit_price_cents = MAX_UNIT_PRICE_CENTS;
        assert!(validate_order(&r).is_ok());
    }

    #[test]
    fn the_largest_order_fits_without_overflow() {
        let mut r = request();
        r.items = vec![line("A", MAX_QTY, MAX_UNIT_PRICE_CENTS); MAX_ITEMS];
        let order = validate_order(&r).unwrap();
        assert_eq!(
            order.amount_cents,
            MAX_ITEMS as i64 * MAX_QTY * MAX_UNIT_PRICE_CENTS
        );
    }

    #[test]
    fn coordinates_name_the_offending_axis() {
        let mut r = request();
        r.pickup.lat = 90.5;
        assert_eq!(field_of(&r), "pickup.lat");
        r.pickup.lat = -90.0;
        r.dropoff.lon = -180.01;
        assert_eq!(field_of(&r), "dropoff.lon");
        r.dropoff.lon = 180.0;
        assert!(validate_order(&r).is_ok());
        r.pickup.lon = f64::NAN;
        assert_eq!(field_of(&r), "pickup.lon");
        r.pickup.lon = 0.0;
        r.dropoff.lat = f64::INFINITY;
        assert_eq!(field_of(&r), "dropoff.lat");
    }

    #[test]
    fn payment_token_length_is_checked() {
        let mut r = request();
        r.payment_token = String::new();
        assert_eq!(field_of(&r), "payment_token");
        r.payment_token = "t".repeat(MAX_PAYMENT_TOKEN_CHARS);
        assert!(validate_order(&r).is_ok());
        r.payment_token.push('t');
        assert_eq!(field_of(&r), "payment_token");
    }

    #[test]
    fn idempotency_keys_and_customer_ids_are_bounded() {
        assert!(validate_idempotency_key("k").is_ok());
        assert!(validate_idempotency_key(&"k".repeat(255)).is_ok());
        assert_eq!(
            validate_idempotency_key("").unwrap_err().field,
            "Idempotency-Key"
        );
        assert!(validate_idempotency_key(&"k".repeat(256)).is_err());
        assert!(validate_customer_id("cust-42").is_ok());
        assert!(validate_customer_id("").is_err());
        assert!(validate_customer_id(&"c".repeat(MAX_TEXT_CHARS + 1)).is_err());
    }

    #[test]
    fn canonical_form_ignores_formatting_but_not_content() {
        let spaced: OrderRequest = serde_json::from_str(
            r#"{ "payment_token": "tok_ok", "dropoff": {"lon": 121.47680, "lat": 31.2243},
                 "pickup": {"lat": 31.2304, "lon": 121.4737},
                 "items": [{"unit_price_cents": 12800, "qty": 2, "sku": "TEA-LONGJING_250g.v2"},
                           {"sku": "MOONCAKE-6", "qty": 1, "unit_price_cents": 6600}] }"#,
        )
        .unwrap();
        assert_eq!(canonical_request(&spaced), canonical_request(&request()));
        let mut other = request();
        other.items[0].qty = 3;
        assert_ne!(canonical_request(&other), canonical_request(&request()));
    }

    #[test]
    fn deadline_is_creation_plus_the_setting_in_microseconds() {
        let created = DateTime::parse_from_rfc3339("2026-11-24T10:30:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let deadline = deadline_after(created, Duration::from_nanos(300_000_000_999)).unwrap();
        assert_eq!(deadline.to_rfc3339(), "2026-11-24T10:35:00.123456+00:00");
        assert_eq!(deadline_after(created, Duration::MAX), None);
    }

    #[test]
    fn sweep_period_is_a_quarter_of_the_deadline_within_bounds() {
        assert_eq!(
            deadline_sweep_period(Duration::from_secs(300)),
            Duration::from_secs(1)
        );
        assert_eq!(
            deadline_sweep_period(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            deadline_sweep_period(Duration::ZERO),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn statuses_round_trip_and_rank_along_the_happy_path() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("shipped"), None);
        let ranks: Vec<Option<u8>> = OrderStatus::ALL.iter().map(|s| s.progress_rank()).collect();
        assert_eq!(
            ranks,
            [
                Some(0),
                Some(1),
                Some(2),
                Some(3),
                Some(4),
                Some(5),
                None,
                None
            ]
        );
        let open: Vec<&str> = OrderStatus::ALL
            .iter()
            .filter(|s| !s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        // the migration's partial index and the deadline timer's query list these literally
        assert_eq!(open, ["pending", "paid", "reserved", "waybill_created"]);
        for reason in CancelledReason::ALL {
            assert_eq!(CancelledReason::parse(reason.as_str()), Some(reason));
        }
    }

    fn state(status: OrderStatus) -> ReadModelState {
        ReadModelState {
            status,
            reason: None,
            waybill_id: None,
            courier_id: None,
        }
    }

    struct Events {
        order_id: OrderId,
        waybill_id: WaybillId,
        courier_id: CourierId,
    }

    impl Events {
        fn new() -> Self {
            Self {
                order_id: OrderId::new(),
                waybill_id: WaybillId::new(),
                courier_id: CourierId::parse("courier-07").unwrap(),
            }
        }
        fn point() -> GeoPoint {
            GeoPoint::new(31.2, 121.4).unwrap()
        }
        fn items() -> Vec<LineItem> {
            vec![LineItem {
                sku: "A".into(),
                qty: 1,
                unit_price_cents: 100,
            }]
        }
        fn authorized(&self) -> EventData {
            PaymentAuthorized {
                order_id: self.order_id,
                amount_cents: 100,
                items: Self::items(),
                pickup: Self::point(),
                dropoff: Self::point(),
            }
            .into()
        }
        fn declined(&self) -> EventData {
            PaymentDeclined {
                order_id: self.order_id,
                amount_cents: 100,
                reason: "card_declined".into(),
            }
            .into()
        }
        fn captured(&self) -> EventData {
            PaymentCaptured {
                order_id: self.order_id,
                amount_cents: 100,
            }
            .into()
        }
        fn voided(&self) -> EventData {
            PaymentVoided {
                order_id: self.order_id,
                amount_cents: 100,
            }
            .into()
        }
        fn reserved(&self) -> EventData {
            InventoryReserved {
                order_id: self.order_id,
                items: Self::items(),
                pickup: Self::point(),
                dropoff: Self::point(),
            }
            .into()
        }
        fn out_of_stock(&self) -> EventData {
            InventoryRejected {
                order_id: self.order_id,
                unavailable_skus: vec!["A".into()],
            }
            .into()
        }
        fn released(&self) -> EventData {
            InventoryReleased {
                order_id: self.order_id,
                items: Self::items(),
            }
            .into()
        }
        fn waybill_created(&self) -> EventData {
            WaybillCreated {
                order_id: self.order_id,
                waybill_id: self.waybill_id,
                pickup: Self::point(),
                dropoff: Self::point(),
            }
            .into()
        }
        fn waybill_cancelled(&self) -> EventData {
            WaybillCancelled {
                order_id: self.order_id,
                waybill_id: self.waybill_id,
            }
            .into()
        }
        fn assigned(&self) -> EventData {
            CourierAssigned {
                order_id: self.order_id,
                waybill_id: self.waybill_id,
                courier_id: self.courier_id.clone(),
                distance_km: 1.0,
            }
            .into()
        }
        fn failed(&self, reason: DispatchFailureReason) -> EventData {
            DispatchFailed {
                order_id: self.order_id,
                waybill_id: self.waybill_id,
                reason,
            }
            .into()
        }
        fn delivered(&self) -> EventData {
            Delivered {
                order_id: self.order_id,
                waybill_id: self.waybill_id,
                courier_id: self.courier_id.clone(),
            }
            .into()
        }
    }

    fn replay(events: &[EventData]) -> ReadModelState {
        events
            .iter()
            .fold(state(OrderStatus::Pending), |s, e| apply_event(&s, e))
    }

    #[test]
    fn the_happy_path_in_order() {
        let e = Events::new();
        let end = replay(&[
            e.authorized(),
            e.reserved(),
            e.waybill_created(),
            e.assigned(),
            e.captured(),
            e.delivered(),
        ]);
        assert_eq!(end.status, OrderStatus::Delivered);
        assert_eq!(end.reason, None);
        assert_eq!(end.waybill_id, Some(e.waybill_id));
        assert_eq!(end.courier_id, Some(e.courier_id.clone()));
    }

    #[test]
    fn forward_statuses_never_move_back() {
        let e = Events::new();
        let end = replay(&[
            e.captured(),
            e.authorized(),
            e.reserved(),
            e.waybill_created(),
        ]);
        assert_eq!(end.status, OrderStatus::Dispatched);
        assert_eq!(end.waybill_id, Some(e.waybill_id));
        let end = replay(&[e.delivered(), e.captured(), e.assigned()]);
        assert_eq!(end.status, OrderStatus::Delivered);
        assert_eq!(end.courier_id, Some(e.courier_id.clone()));
    }

    #[test]
    fn failures_are_final() {
        let e = Events::new();
        let rejected = replay(&[e.declined(), e.authorized(), e.captured(), e.delivered()]);
        assert_eq!(rejected.status, OrderStatus::Rejected);
        assert_eq!(rejected.reason, None);

        let out_of_stock = replay(&[e.authorized(), e.out_of_stock(), e.reserved(), e.declined()]);
        assert_eq!(out_of_stock.status, OrderStatus::Cancelled);
        assert_eq!(out_of_stock.reason, Some(CancelledReason::OutOfStock));

        let no_courier = replay(&[
            e.waybill_created(),
            e.failed(DispatchFailureReason::NoCourier),
            e.failed(DispatchFailureReason::Customer),
            e.captured(),
        ]);
        assert_eq!(no_courier.status, OrderStatus::Cancelled);
        assert_eq!(no_courier.reason, Some(CancelledReason::NoCourier));
    }

    #[test]
    fn each_dispatch_failure_reason_is_kept() {
        let e = Events::new();
        for (reason, expected) in [
            (DispatchFailureReason::NoCourier, CancelledReason::NoCourier),
            (DispatchFailureReason::Customer, CancelledReason::Customer),
            (DispatchFailureReason::Deadline, CancelledReason::Deadline),
        ] {
            let end = replay(&[e.authorized(), e.failed(reason)]);
            assert_eq!(
                (end.status, end.reason),
                (OrderStatus::Cancelled, Some(expected))
            );
        }
    }

    #[test]
    fn dispatched_only_moves_to_delivered() {
        let e = Events::new();
        for failure in [
            e.declined(),
            e.out_of_stock(),
            e.failed(DispatchFailureReason::Deadline),
        ] {
            let end = replay(&[e.captured(), failure]);
            assert_eq!(end.status, OrderStatus::Dispatched);
            assert_eq!(end.reason, None);
        }
        let end = replay(&[e.captured(), e.delivered()]);
        assert_eq!(end.status, OrderStatus::Delivered);
    }

    #[test]
    fn compensations_only_add_references() {
        let e = Events::new();
        let start = state(OrderStatus::Reserved);
        for event in [e.voided(), e.released()] {
            assert_eq!(apply_event(&start, &event), start);
        }
        let after = apply_event(&start, &e.waybill_cancelled());
        assert_eq!(after.status, OrderStatus::Reserved);
        assert_eq!(after.waybill_id, Some(e.waybill_id));
    }

    #[test]
    fn the_first_waybill_and_courier_are_kept() {
        let e = Events::new();
        let other = Events::new();
        let end = replay(&[e.assigned(), other.assigned(), other.delivered()]);
        assert_eq!(end.waybill_id, Some(e.waybill_id));
        assert_eq!(end.courier_id, Some(e.courier_id.clone()));
    }

    #[test]
    fn cancel_is_requested_once_and_refused_when_terminal() {
        for status in OrderStatus::ALL {
            let first = decide_cancel(status, false);
            let again = decide_cancel(status, true);
            if status.is_terminal() {
                assert_eq!(
                    (first, again),
                    (CancelDecision::Refuse, CancelDecision::Refuse)
                );
            } else {
                assert_eq!(
                    (first, again),
                    (CancelDecision::Request, CancelDecision::AlreadyRequested)
                );
            }
        }
    }
}
