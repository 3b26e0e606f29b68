//! Fuzz target: the body of `POST /v1/orders`, read as order intake reads it (JSON naming the
//! field at fault, then the order rules). It must never panic, and a body it accepts must have
//! a canonical form that is itself accepted and canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(canonical) = jwl_order::check_order_body(data) {
        let again = jwl_order::check_order_body(canonical.as_bytes())
            .expect("the canonical form of an accepted body is accepted");
        assert_eq!(again, canonical, "the canonical form is not a fixed point");
    }
});
