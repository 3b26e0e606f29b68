//! Payload invariants, checked on decode and before emitting ([`EventData::validate`]).
//!
//! [`EventData::validate`]: super::EventData::validate

use std::fmt::Display;

use super::payloads::*;
use crate::geo::GeoPoint;

/// Most lines an order may have.
pub const MAX_LINE_ITEMS: usize = 100;
/// Longest SKU, in characters.
pub const MAX_SKU_CHARS: usize = 64;
/// Longest free-text field (`customer_id`, `payment_token`, `reason`), in characters.
pub const MAX_TEXT_CHARS: usize = 256;

/// A payload field that breaks an invariant, e.g. `items[2].qty: must be at least 1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// Path of the offending field: `amount_cents`, `items[0].sku`, `pickup`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, reason: impl Display) -> Self {
        Self {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

type Checked = Result<(), ValidationError>;

impl LineItem {
    /// `qty * unit_price_cents`, or `None` on overflow.
    pub fn subtotal_cents(&self) -> Option<i64> {
        i64::from(self.qty).checked_mul(self.unit_price_cents)
    }

    /// The sum of all subtotals, or `None` on overflow.
    pub fn total_cents(items: &[LineItem]) -> Option<i64> {
        items
            .iter()
            .try_fold(0_i64, |sum, item| sum.checked_add(item.subtotal_cents()?))
    }

    /// Checks one line; `field` is its path for the error (`items[3]`).
    fn validate_at(&self, field: &str) -> Checked {
        sku(&format!("{field}.sku"), &self.sku)?;
        if self.qty < 1 {
            return Err(ValidationError::new(
                format!("{field}.qty"),
                "must be at least 1",
            ));
        }
        if self.unit_price_cents < 1 {
            return Err(ValidationError::new(
                format!("{field}.unit_price_cents"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// 1..=[`MAX_LINE_ITEMS`] lines, each valid.
fn items(items: &[LineItem]) -> Checked {
    if items.is_empty() || items.len() > MAX_LINE_ITEMS {
        return Err(ValidationError::new(
            "items",
            format_args!("must have 1..={MAX_LINE_ITEMS} lines, has {}", items.len()),
        ));
    }
    items
        .iter()
        .enumerate()
        .try_for_each(|(i, item)| item.validate_at(&format!("items[{i}]")))
}

fn sku(field: &str, sku: &str) -> Checked {
    let len = sku.chars().count();
    if len == 0 || len > MAX_SKU_CHARS {
        return Err(ValidationError::new(
            field,
            format_args!("must be 1..={MAX_SKU_CHARS} characters, is {len}"),
        ));
    }
    Ok(())
}

fn text(field: &str, value: &str) -> Checked {
    let len = value.chars().count();
    if len == 0 || len > MAX_TEXT_CHARS {
        return Err(ValidationError::new(
            field,
            format_args!("must be 1..={MAX_TEXT_CHARS} characters, is {len}"),
        ));
    }
    Ok(())
}

fn amount(amount_cents: i64) -> Checked {
    if amount_cents < 0 {
        return Err(ValidationError::new("amount_cents", "must not be negative"));
    }
    Ok(())
}

fn point(field: &str, point: &GeoPoint) -> Checked {
    point.validate().map_err(|e| ValidationError::new(field, e))
}

fn route(pickup: &GeoPoint, dropoff: &GeoPoint) -> Checked {
    point("pickup", pickup)?;
    point("dropoff", dropoff)
}

impl OrderCreated {
    /// Lines, coordinates, texts, and `amount_cents == sum(qty * unit_price_cents)`.
    pub fn validate(&self) -> Checked {
        text("customer_id", &self.customer_id)?;
        items(&self.items)?;
        amount(self.amount_cents)?;
        match LineItem::total_cents(&self.items) {
            Some(total) if total == self.amount_cents => {}
            Some(total) => {
                return Err(ValidationError::new(
                    "amount_cents",
                    format_args!(
                        "must equal the sum of the lines ({total}), is {}",
                        self.amount_cents
                    ),
                ));
            }
            None => {
                return Err(ValidationError::new(
                    "amount_cents",
                    "sum of the lines overflows",
                ));
            }
        }
        route(&self.pickup, &self.dropoff)?;
        text("payment_token", &self.payment_token)
    }
}

impl OrderCancelRequested {
    /// Nothing beyond the types.
    pub fn validate(&self) -> Checked {
        Ok(())
    }
}

impl PaymentAuthorized {
    /// Amount, lines and coordinates.
    pub fn validate(&self) -> Checked {
        amount(self.amount_cents)?;
        items(&self.items)?;
        route(&self.pickup, &self.dropoff)
    }
}

impl PaymentDeclined {
    /// Amount and a non-empty reason.
    pub fn validate(&self) -> Checked {
        amount(self.amount_cents)?;
        text("reason", &self.reason)
    }
}

impl PaymentCaptured {
    /// A non-negative amount.
    pub fn validate(&self) -> Checked {
        amount(self.amount_cents)
    }
}

impl PaymentVoided {
    /// A non-negative amount.
    pub fn validate(&self) -> Checked {
        amount(self.amount_cents)
    }
}

impl InventoryReserved {
    /// Lines and coordinates.
    pub fn validate(&self) -> Checked {
        items(&self.items)?;
        route(&self.pickup, &self.dropoff)
    }
}

impl InventoryRejected {
    /// 1..=[`MAX_LINE_ITEMS`] valid SKUs.
    pub fn validate(&self) -> Checked {
        let skus = &self.unavailable_skus;
        if skus.is_empty() || skus.len() > MAX_LINE_ITEMS {
            return Err(ValidationError::new(
                "unavailable_skus",
                format_args!("must have 1..={MAX_LINE_ITEMS} entries, has {}", skus.len()),
            ));
        }
        skus.iter()
            .enumerate()
            .try_for_each(|(i, s)| sku(&format!("unavailable_skus[{i}]"), s))
    }
}

impl InventoryReleased {
    /// Lines.
    pub fn validate(&self) -> Checked {
        items(&self.items)
    }
}

impl WaybillCreated {
    /// Coordinates.
    pub fn validate(&self) -> Checked {
        route(&self.pickup, &self.dropoff)
    }
}

impl WaybillCancelled {
    /// Nothing beyond the types.
    pub fn validate(&self) -> Checked {
        Ok(())
    }
}

impl CourierAssigned {
    /// A finite, non-negative distance.
    pub fn validate(&self) -> Checked {
        if !(self.distance_km.is_finite() && self.distance_km >= 0.0) {
            return Err(ValidationError::new(
                "distance_km",
                format_args!("must be a finite number >= 0, is {}", self.distance_km),
            ));
        }
        Ok(())
    }
}

impl DispatchFailed {
    /// Nothing beyond the types.
    pub fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Delivered {
    /// Nothing beyond the types (the courier id is valid by construction).
    pub fn validate(&self) -> Checked {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::catalogue::EventData;
    use crate::ids::OrderId;

    fn line(sku: &str, qty: u32, unit_price_cents: i64) -> LineItem {
        LineItem {
            sku: sku.to_owned(),
            qty,
            unit_price_cents,
        }
    }

    fn order(items: Vec<LineItem>, amount_cents: i64) -> OrderCreated {
        OrderCreated {
            order_id: OrderId::new(),
            customer_id: "cust-1".into(),
            items,
            amount_cents,
            pickup: GeoPoint::new(31.23, 121.47).unwrap(),
            dropoff: GeoPoint::new(31.22, 121.48).unwrap(),
            payment_token: "tok_ok".into(),
            deadline: Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap(),
        }
    }

    fn field_of(result: Checked) -> String {
        result.expect_err("should be invalid").field
    }

    #[test]
    fn a_consistent_order_is_valid() {
        let o = order(vec![line("TEA-1", 2, 1250), line("MOONCAKE", 1, 800)], 3300);
        assert_eq!(EventData::from(o).validate(), Ok(()));
    }

    #[test]
    fn order_amount_must_equal_the_sum_of_lines() {
        assert_eq!(
            field_of(order(vec![line("A", 2, 100)], 201).validate()),
            "amount_cents"
        );
        assert_eq!(
            field_of(order(vec![line("A", 2, 100)], -1).validate()),
            "amount_cents"
        );
    }

    #[test]
    fn order_amount_overflow_is_rejected_not_wrapped() {
        let o = order(vec![line("A", u32::MAX, i64::MAX / 2), line("B", 1, 1)], 1);
        let err = o.validate().unwrap_err();
        assert_eq!(err.field, "amount_cents");
        assert!(err.reason.contains("overflow"), "{err}");
    }

    #[test]
    fn item_rules() {
        assert_eq!(field_of(order(vec![], 0).validate()), "items");
        let many = vec![line("A", 1, 1); MAX_LINE_ITEMS + 1];
        assert_eq!(field_of(order(many, 101).validate()), "items");
        assert_eq!(
            field_of(order(vec![line("A", 0, 100)], 0).validate()),
            "items[0].qty"
        );
        let zero_price = order(vec![line("A", 1, 1), line("B", 1, 0)], 1);
        assert_eq!(field_of(zero_price.validate()), "items[1].unit_price_cents");
        assert_eq!(
            field_of(order(vec![line("", 1, 1)], 1).validate()),
            "items[0].sku"
        );
        let long_sku = "货".repeat(MAX_SKU_CHARS + 1);
        assert_eq!(
            field_of(order(vec![line(&long_sku, 1, 1)], 1).validate()),
            "items[0].sku"
        );
        assert!(
            order(vec![line(&"货".repeat(MAX_SKU_CHARS), 1, 1)], 1)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn coordinates_built_by_hand_are_checked() {
        let mut o = order(vec![line("A", 1, 1)], 1);
        o.dropoff = GeoPoint {
            lat: 91.0,
            lon: 0.0,
        };
        assert_eq!(field_of(o.validate()), "dropoff");
    }

    #[test]
    fn texts_must_be_present() {
        let mut o = order(vec![line("A", 1, 1)], 1);
        o.payment_token.clear();
        assert_eq!(field_of(o.validate()), "payment_token");
    }

    #[test]
    fn other_payload_rules() {
        let order_id = OrderId::new();
        let rejected = InventoryRejected {
            order_id,
            unavailable_skus: vec![],
        };
        assert_eq!(field_of(rejected.validate()), "unavailable_skus");
        let captured = PaymentCaptured {
            order_id,
            amount_cents: -5,
        };
        assert_eq!(field_of(captured.validate()), "amount_cents");
        let assigned = CourierAssigned {
            order_id,
            waybill_id: crate::ids::WaybillId::new(),
            courier_id: crate::ids::CourierId::parse("c1").unwrap(),
            distance_km: f64::NAN,
        };
        assert_eq!(field_of(assigned.validate()), "distance_km");
    }
}
