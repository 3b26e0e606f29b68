//! Waiting for a condition by polling it, with a deadline — tests use this instead of sleeps.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What one poll of [`eventually`] produced: done with a value, or not yet (with an optional
/// reason, reported if the deadline passes).
pub trait PollOutcome {
    type Value;
    fn into_poll(self) -> Result<Self::Value, Option<String>>;
}

/// `Some(v)` is done, `None` is not yet.
impl<T> PollOutcome for Option<T> {
    type Value = T;
    fn into_poll(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Ok(v)` is done; `Err(e)` is not yet (e.g. a row that does not exist yet, a server still
/// restarting), and the last error is reported on timeout.
impl<T, E: Display> PollOutcome for Result<T, E> {
    type Value = T;
    fn into_poll(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// `true` is done.
impl PollOutcome for bool {
    type Value = ();
    fn into_poll(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

/// Calls `f` now and then every 50 ms until it yields a value (`Some`, `Ok` or `true`), and
/// returns that value; fails once `timeout` has passed, naming `what` and the last error. A
/// single call that hangs past the deadline is abandoned.
///
/// ```
/// # use std::time::Duration;
/// # use jwl_testkit::eventually;
/// # async fn example(pool: sqlx::PgPool) -> anyhow::Result<()> {
/// let status = eventually("the order is dispatched", Duration::from_secs(10), || async {
///     let status: String = sqlx::query_scalar("SELECT status FROM orders").fetch_one(&pool).await.ok()?;
///     (status == "dispatched").then_some(status)
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn eventually<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: PollOutcome<Value = T>,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let mut attempts = 0u32;
    let mut last_error: Option<String> = None;
    loop {
        attempts += 1;
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(outcome) => match outcome.into_poll() {
                Ok(value) => return Ok(value),
                Err(Some(error)) => last_error = Some(error),
                Err(None) => {}
            },
            Err(_elapsed) => {
                last_error = Some("the last attempt was still running at the deadline".to_owned())
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let last = last_error
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what} ({attempts} attempts{last})"
            );
        }
        // The last attempt happens at the deadline itself.
        tokio::time::sleep_until((now + POLL_INTERVAL).min(deadline)).await;
    }
}
