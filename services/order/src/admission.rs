//! The backlog intake admission reads ([`jwl_service_kit::http::admission`]): the orders not yet
//! in a terminal status — the work a new order would queue behind, in every service — and how
//! many reached one in the last [`WINDOW`].

use std::time::Duration;

use async_trait::async_trait;
use jwl_service_kit::http::admission::{BacklogProbe, BacklogSample};
use sqlx::PgPool;

use crate::store;

/// The window the finish rate is measured over.
pub const WINDOW: Duration = Duration::from_secs(2);

/// Samples the order tables.
pub struct OpenOrders {
    pub pool: PgPool,
}

#[async_trait]
impl BacklogProbe for OpenOrders {
    async fn sample(&self) -> Result<BacklogSample, sqlx::Error> {
        let (open, oldest, finished) = store::backlog(&self.pool, WINDOW.as_secs_f64()).await?;
        Ok(BacklogSample {
            open: u64::try_from(open).unwrap_or(0),
            finished: u64::try_from(finished).unwrap_or(0),
            window: WINDOW,
            oldest_open_age: oldest
                .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
                .map(Duration::from_secs_f64),
        })
    }
}
