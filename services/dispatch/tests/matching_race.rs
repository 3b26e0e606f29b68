//! A new waybill and a courier reporting a position next to it, committed at the same moment,
//! must not miss each other: whichever transaction commits second has to see the first. Under
//! READ COMMITTED alone each could read before the other committed, and the waybill would wait
//! (for the courier's next report, or fail at its deadline) beside an idle courier.

mod common;

use common::*;
use jwl_service_kit::Settings;

/// Rounds of the race; each has its own courier and pickup, far from the others'.
const ROUNDS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waybill_and_a_courier_arriving_together_are_matched() -> anyhow::Result<()> {
    let h = Harness::with_settings(Settings {
        dispatch_radius_km: 2.0,
        ..Settings::default()
    })
    .await?;
    let mut missed = Vec::new();
    for round in 0..ROUNDS {
        // 10 km apart: no round can match another's courier
        let pickup = km_east(round as f64 * 10.0);
        let event = waybill_created(pickup);
        let courier = format!("courier-{round}");
        let (handled, _) = tokio::join!(h.handle(&event), h.report(&courier, pickup));
        handled?;
        let (status, assigned_to, _) = h.waybill(created(&event).waybill_id).await?;
        if status != "assigned" || assigned_to.as_deref() != Some(courier.as_str()) {
            missed.push((round, status));
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {ROUNDS} waybills missed the courier beside them: {missed:?}",
        missed.len()
    );
    Ok(())
}
