//! Waiting for the system to go quiet and checking the invariants against what the API, the
//! database and the broker hold ([`System::drain`], [`System::check_invariants`]).

use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use jwl_events::Service;
use jwl_testkit::eventually;

use crate::invariants::{
    self, Evidence, Injected, OrderEvidence, Outcomes, PlacedOrder, StockEvidence, Verdict,
};
use crate::system::{BrokerKind, System};

/// How long the system may take to go quiet once the orders are terminal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent API reads while gathering evidence.
const READ_CONCURRENCY: usize = 16;
/// Violations listed in a failure message.
const MAX_LISTED: usize = 60;

impl System {
    /// Waits until nothing is in flight: every durable consumer has received and acknowledged
    /// everything, every outbox row is published, and the stream did not grow meanwhile.
    /// (Timers may still fire later: deadlines are the test's to choose.)
    pub async fn drain(&self) -> anyhow::Result<()> {
        eventually("the system to drain", DRAIN_TIMEOUT, || async {
            let before = self.events_in_stream().await?;
            self.consumers_drained().await?;
            for service in Service::ALL {
                let unpublished = self.store.unpublished_count(service).await?;
                anyhow::ensure!(
                    unpublished == 0,
                    "{service} has {unpublished} unpublished outbox rows"
                );
            }
            self.consumers_drained().await?;
            let after = self.events_in_stream().await?;
            anyhow::ensure!(before == after, "the stream grew from {before} to {after}");
            anyhow::Ok(())
        })
        .await
        .with_context(|| format!("logs in {}", self.log_dir().display()))
    }

    /// Drains the system, then checks the README's invariants (How delivery is guaranteed) for `orders` (every order placed in this
    /// system) and the SKUs set with [`System::set_stock`]; also requires an empty DLQ.
    /// Returns how the orders ended; fails listing every violation.
    pub async fn check_invariants(&self, orders: &[PlacedOrder]) -> anyhow::Result<Outcomes> {
        self.check_invariants_with(orders, &Injected::default())
            .await
    }

    /// [`System::check_invariants`], except that the DLQ must hold exactly the dead letters of
    /// the `injected` messages (at least one each, and nothing else), which may also be
    /// undecodable and in no outbox.
    pub async fn check_invariants_with(
        &self,
        orders: &[PlacedOrder],
        injected: &Injected,
    ) -> anyhow::Result<Outcomes> {
        self.drain().await?;
        let verdict = self.verdict_with(orders, injected).await?;
        if verdict.violations.is_empty() {
            return Ok(verdict.outcomes);
        }
        let listed: Vec<&str> = verdict
            .violations
            .iter()
            .take(MAX_LISTED)
            .map(String::as_str)
            .collect();
        anyhow::bail!(
            "{} invariant violations (outcomes: {}; logs in {}):\n  {}{}",
            verdict.violations.len(),
            verdict.outcomes,
            self.log_dir().display(),
            listed.join("\n  "),
            if verdict.violations.len() > MAX_LISTED {
                "\n  …"
            } else {
                ""
            }
        )
    }

    /// Gathers the evidence now (without draining first) and checks it: every violation, and
    /// the outcome counts, for a test that reports figures rather than failing at the first
    /// violation (the soak).
    pub async fn verdict_with(
        &self,
        orders: &[PlacedOrder],
        injected: &Injected,
    ) -> anyhow::Result<Verdict> {
        let evidence = self.gather_evidence(orders).await?;
        Ok(invariants::check_with(&evidence, injected))
    }

    async fn gather_evidence(&self, orders: &[PlacedOrder]) -> anyhow::Result<Evidence> {
        let admin = self.admin_token();
        let order_evidence: Vec<OrderEvidence> = futures::stream::iter(orders)
            .map(|placed| async move {
                let view = self.api().order(admin, &placed.order_id).await?;
                let payment = self.api().payment(admin, &placed.order_id).await?;
                anyhow::Ok(OrderEvidence {
                    placed: placed.clone(),
                    view,
                    payment,
                })
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let stocked: Vec<(String, i64)> = self
            .stocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(sku, on_hand)| (sku.clone(), *on_hand))
            .collect();
        let mut stock = Vec::with_capacity(stocked.len());
        for (sku, initial_on_hand) in stocked {
            let level = self.api().stock(admin, &sku).await?;
            stock.push(StockEvidence {
                sku,
                initial_on_hand,
                level,
            });
        }
        let contents = self.broker.events().await?;
        let mut outboxes = Vec::with_capacity(Service::ALL.len());
        for service in Service::ALL {
            outboxes.push((service, self.store.outbox(service).await?));
        }
        Ok(Evidence {
            orders: order_evidence,
            stock,
            events: contents.events,
            undecodable: contents.undecodable,
            outboxes,
            dead_letters: self.broker.dead_letters().await?,
            payments: self.store.payments().await?,
            waybills: self.store.waybills().await?,
            stock_rows: self.store.stock().await?,
            order_reservations: self.store.order_reservations().await?,
            reservations: self.store.reservations().await?,
            couriers: self.store.couriers().await?,
            dispatch_waybills: self.store.dispatch_waybills().await?,
            courier_capacity: self.options().courier_capacity,
            republished_copies: self.options().broker == BrokerKind::Kafka,
        })
    }

    async fn consumers_drained(&self) -> anyhow::Result<()> {
        let backlogs = self.broker.consumer_backlogs().await?;
        let busy: Vec<String> = backlogs
            .iter()
            .filter(|b| b.backlog.pending > 0 || b.backlog.ack_pending > 0)
            .map(|b| {
                format!(
                    "{} (pending {}, unacked {})",
                    b.name, b.backlog.pending, b.backlog.ack_pending
                )
            })
            .collect();
        anyhow::ensure!(busy.is_empty(), "consumers busy: {}", busy.join(", "));
        Ok(())
    }

    /// How many messages the events stream holds (what tells whether it grew).
    async fn events_in_stream(&self) -> anyhow::Result<u64> {
        self.broker.event_count().await
    }
}
