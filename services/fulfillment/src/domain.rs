//! Fulfillment's decisions as pure functions: the waybill status machine and what each incoming
//! event does to a waybill in a given state (including the tombstone for a `dispatch.failed`
//! that overtakes the `inventory.reserved` creating the waybill).
//!
//! ```text
//! (none) ──inventory.reserved──► open ──courier_assigned──► assigned ──delivered──► delivered
//!   │                             │  └──────────────delivered──────────────────────────▲
//!   │                             └──dispatch.failed──► cancelled
//!   └──dispatch.failed (tombstone)──► cancelled   (a late inventory.reserved then creates nothing)
//! ```

use std::fmt;

/// The life cycle of a waybill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaybillStatus {
    /// Created, waiting for dispatch to assign a courier.
    Open,
    /// A courier has it.
    Assigned,
    /// Dispatch gave up (no courier, or the order was cancelled). Terminal.
    Cancelled,
    /// The courier delivered it. Terminal.
    Delivered,
}

impl WaybillStatus {
    /// The stored and API name.
    pub const fn as_str(self) -> &'static str {
        match self {
            WaybillStatus::Open => "open",
            WaybillStatus::Assigned => "assigned",
            WaybillStatus::Cancelled => "cancelled",
            WaybillStatus::Delivered => "delivered",
        }
    }

    /// The status stored as `name`.
    pub fn parse(name: &str) -> Option<WaybillStatus> {
        [
            WaybillStatus::Open,
            WaybillStatus::Assigned,
            WaybillStatus::Cancelled,
            WaybillStatus::Delivered,
        ]
        .into_iter()
        .find(|status| status.as_str() == name)
    }
}

impl fmt::Display for WaybillStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `inventory.reserved` does, given the order's existing waybill (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReserved {
    /// No waybill yet: create one (`open`) and emit `waybill_created`.
    Create,
    /// A `dispatch.failed` came first and left a cancelled tombstone: create nothing live and
    /// emit nothing (the saga is already compensating); only fill in the addresses.
    CompleteTombstone,
    /// The waybill exists (a redelivered or repeated reservation): nothing to do.
    AlreadyCreated,
}

/// Decides `inventory.reserved`.
pub fn on_inventory_reserved(existing: Option<WaybillStatus>) -> OnReserved {
    match existing {
        None => OnReserved::Create,
        Some(WaybillStatus::Cancelled) => OnReserved::CompleteTombstone,
        Some(_) => OnReserved::AlreadyCreated,
    }
}

/// What `dispatch.failed` does, given the waybill's status (if it exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDispatchFailed {
    /// Open → cancelled, emit `waybill_cancelled`.
    Cancel,
    /// The waybill does not exist yet: record it as cancelled (a tombstone) under the event's
    /// waybill id and emit `waybill_cancelled`, so the late reservation creates nothing live.
    Tombstone,
    /// Already cancelled (a repeated failure): nothing to do.
    AlreadyCancelled,
    /// Assigned or delivered: dispatch never fails such a waybill; a contradiction, dead-lettered.
    Ignore,
}

/// Decides `dispatch.failed`.
pub fn on_dispatch_failed(existing: Option<WaybillStatus>) -> OnDispatchFailed {
    match existing {
        None => OnDispatchFailed::Tombstone,
        Some(WaybillStatus::Open) => OnDispatchFailed::Cancel,
        Some(WaybillStatus::Cancelled) => OnDispatchFailed::AlreadyCancelled,
        Some(WaybillStatus::Assigned | WaybillStatus::Delivered) => OnDispatchFailed::Ignore,
    }
}

/// What a forward event (`courier_assigned`, `delivered`) does to an existing waybill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Move to this status (and record the courier).
    MoveTo(WaybillStatus),
    /// The waybill is already there or beyond it (duplicate, or events handled out of order).
    Stay,
    /// The waybill is cancelled: a forward event contradicts it; dead-lettered.
    Refuse,
}

/// Decides `dispatch.courier_assigned`.
pub fn on_courier_assigned(current: WaybillStatus) -> Step {
    match current {
        WaybillStatus::Open => Step::MoveTo(WaybillStatus::Assigned),
        // `delivered` may be handled before `courier_assigned` (one consumer per type).
        WaybillStatus::Assigned | WaybillStatus::Delivered => Step::Stay,
        WaybillStatus::Cancelled => Step::Refuse,
    }
}

/// Decides `dispatch.delivered`.
pub fn on_delivered(current: WaybillStatus) -> Step {
    match current {
        WaybillStatus::Open | WaybillStatus::Assigned => Step::MoveTo(WaybillStatus::Delivered),
        WaybillStatus::Delivered => Step::Stay,
        WaybillStatus::Cancelled => Step::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WaybillStatus::*;

    const ALL: [WaybillStatus; 4] = [Open, Assigned, Cancelled, Delivered];

    #[test]
    fn status_names_round_trip() {
        for status in ALL {
            assert_eq!(WaybillStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(WaybillStatus::parse("lost"), None);
    }

    #[test]
    fn reservation_creates_once_and_respects_the_tombstone() {
        assert_eq!(on_inventory_reserved(None), OnReserved::Create);
        assert_eq!(
            on_inventory_reserved(Some(Cancelled)),
            OnReserved::CompleteTombstone
        );
        for status in [Open, Assigned, Delivered] {
            assert_eq!(
                on_inventory_reserved(Some(status)),
                OnReserved::AlreadyCreated
            );
        }
    }

    #[test]
    fn dispatch_failure_cancels_open_waybills_once() {
        assert_eq!(on_dispatch_failed(Some(Open)), OnDispatchFailed::Cancel);
        assert_eq!(
            on_dispatch_failed(Some(Cancelled)),
            OnDispatchFailed::AlreadyCancelled
        );
        assert_eq!(on_dispatch_failed(None), OnDispatchFailed::Tombstone);
        assert_eq!(on_dispatch_failed(Some(Assigned)), OnDispatchFailed::Ignore);
        assert_eq!(
            on_dispatch_failed(Some(Delivered)),
            OnDispatchFailed::Ignore
        );
    }

    #[test]
    fn assignment_moves_open_to_assigned_only() {
        assert_eq!(on_courier_assigned(Open), Step::MoveTo(Assigned));
        assert_eq!(on_courier_assigned(Assigned), Step::Stay);
        assert_eq!(on_courier_assigned(Delivered), Step::Stay);
        assert_eq!(on_courier_assigned(Cancelled), Step::Refuse);
    }

    #[test]
    fn delivery_is_final_and_may_overtake_the_assignment() {
        assert_eq!(on_delivered(Assigned), Step::MoveTo(Delivered));
        assert_eq!(on_delivered(Open), Step::MoveTo(Delivered));
        assert_eq!(on_delivered(Delivered), Step::Stay);
        assert_eq!(on_delivered(Cancelled), Step::Refuse);
    }

    #[test]
    fn no_event_leaves_a_terminal_status() {
        for step in [on_courier_assigned(Cancelled), on_delivered(Cancelled)] {
            assert!(!matches!(step, Step::MoveTo(_)));
        }
        for step in [on_courier_assigned(Delivered), on_delivered(Delivered)] {
            assert_eq!(step, Step::Stay);
        }
        assert_ne!(
            on_dispatch_failed(Some(Delivered)),
            OnDispatchFailed::Cancel
        );
    }
}
