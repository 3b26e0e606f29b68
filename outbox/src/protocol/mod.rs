//! The messaging protocol beside the events themselves, defined once for the runtime that
//! speaks it (the consumer loop writes dead letters and reads the replay channel) and for the
//! operator tools (`jwl-ops` reads dead letters and writes to the replay channel and the
//! dead-letter log): [`dead_letter`] and [`replay`]. Who consumes which event type is the
//! catalogue's (`jwl_events::Service::subscriptions`); the inbox consumer names are
//! [`crate::durable_name`] and [`crate::consumer_service`].

pub mod dead_letter;
pub mod replay;
