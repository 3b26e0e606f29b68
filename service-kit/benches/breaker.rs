//! What the circuit breaker adds to each guarded call: leave to call and the outcome's record
//! (the window's check against the thresholds), with the window full: its most calls, as under
//! load (the calls of the timing keep it full).
//!
//! ```text
//! cargo bench -p jwl-service-kit --bench breaker
//! ```

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use jwl_service_kit::breaker::{Breaker, BreakerSettings};

/// Calls recorded before the timing starts: more than the window keeps.
const FULL: usize = 5_000;

fn guarded_call(breaker: &Arc<Breaker>) {
    if let Some(permit) = breaker.try_call() {
        let _state = permit.record(true);
    }
}

fn breaker(c: &mut Criterion) {
    let breaker = Breaker::new("bench", BreakerSettings::default());
    for _ in 0..FULL {
        guarded_call(&breaker);
    }
    c.bench_function("breaker_call_full_window", |b| {
        b.iter(|| guarded_call(&breaker))
    });
}

criterion_group!(benches, breaker);
criterion_main!(benches);
