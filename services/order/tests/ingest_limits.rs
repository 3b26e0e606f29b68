//! Backpressure on `POST /v1/orders`: over the rate (global or the caller's own) → `429`, with
//! too many requests in flight → `503`, with more orders open than the system finishes in time →
//! `503`, each a problem detail with `Retry-After`, refused before any work; requests without a
//! valid token are refused first and cost nobody a token; reads are not limited.

mod common;

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::Utc;
use common::*;
use jwl_events::{PaymentDeclined, Service};
use jwl_service_kit::Settings;
use jwl_service_kit::http::IngestLimits;
use jwl_service_kit::http::admission::BacklogLimits;

fn limited(rate_per_second: u32, burst: u32, max_in_flight: usize) -> Settings {
    Settings {
        ingest: IngestLimits {
            rate_per_second: NonZeroU32::new(rate_per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
            max_in_flight: NonZeroUsize::new(max_in_flight).unwrap(),
            ..IngestLimits::default()
        },
        ..Settings::default()
    }
}

async fn orders_in_db(app: &TestApp) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.pool)
        .await?)
}

#[tokio::test]
async fn orders_over_the_rate_get_429_with_retry_after_and_change_nothing() -> anyhow::Result<()> {
    // one a second, two at once: of ten sent together, the burst and what refilled meanwhile pass
    let app = TestApp::start_with(limited(1, 2, 64)).await?;
    let token = app.customer(CUSTOMER);
    let body = order_body();
    let started = Instant::now();
    let replies =
        futures::future::try_join_all((0..10).map(|_| app.post_order(Some(&token), &body, None)))
            .await?;
    let refilled = started.elapsed().as_secs() + 1;
    let (created, refused): (Vec<Reply>, Vec<Reply>) = replies
        .into_iter()
        .partition(|reply| reply.status == StatusCode::CREATED);
    assert!(
        (2..=2 + refilled).contains(&(created.len() as u64)),
        "{} created",
        created.len()
    );
    for reply in &refused {
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(reply.json["status"], 429);
        let retry_after: u64 = reply.header("retry-after").expect("Retry-After").parse()?;
        assert!((1..=2).contains(&retry_after), "{retry_after}");
    }
    assert_eq!(
        orders_in_db(&app).await?,
        created.len() as i64,
        "no refused order was created"
    );

    // reading is not ingest
    let read = app
        .get(
            Some(&token),
            &format!("/v1/orders/{}", created[0].order_id()),
        )
        .await?;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    Ok(())
}

#[tokio::test]
async fn orders_beyond_the_requests_in_flight_get_503_with_retry_after() -> anyhow::Result<()> {
    let app = TestApp::start_with(limited(1_000, 1_000, 1)).await?;
    let token = app.customer(CUSTOMER);
    // hold the first order inside its transaction: its insert waits for this lock
    let mut blocker = app.pool.begin().await?;
    sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await?;
    let body = order_body();
    let first = app.post_order(Some(&token), &body, None);
    tokio::pin!(first);
    let second = tokio::select! {
        reply = &mut first => panic!("the first order went through the lock: {reply:?}"),
        second = async {
            // the first is in flight once it waits on the lock
            jwl_testkit::eventually("the first order waits on the lock", SOON, || async {
                sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                     WHERE wait_event_type = 'Lock' AND datname = current_database())",
                )
                .fetch_one(&app.pool)
                .await
                .ok()
                .filter(|waiting| *waiting)
            })
            .await?;
            // refused at once, or (without the cap) stuck behind the lock like the first
            tokio::time::timeout(SOON, app.post_order(Some(&token), &body, None)).await?
        } => second?,
    };
    assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE, "{second:?}");
    assert_eq!(second.header("retry-after"), Some("1"));
    assert_eq!(second.json["status"], 503);

    blocker.rollback().await?;
    let first = first.await?;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let third = app.post_order(Some(&token), &order_body(), None).await?;
    assert_eq!(
        third.status,
        StatusCode::CREATED,
        "room again once the first finished: {third:?}"
    );
    Ok(())
}

#[tokio::test]
async fn orders_beyond_what_the_system_finishes_in_time_get_503_until_some_finish()
-> anyhow::Result<()> {
    // nothing consumes the events here, so nothing finishes unless the test says so: the limit
    // is the floor of three open orders
    let settings = Settings {
        ingest: IngestLimits {
            backlog: BacklogLimits {
                target: Some(Duration::from_secs(2)),
                min_open: NonZeroU32::new(3).unwrap(),
            },
            ..IngestLimits::default()
        },
        ..Settings::default()
    };
    let app = TestApp::start_with(settings).await?;
    let token = app.customer(CUSTOMER);
    let body = order_body();
    let mut open = Vec::new();
    for _ in 0..3 {
        let reply = app.post_order(Some(&token), &body, None).await?;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        open.push(reply.order_id());
    }
    let refused = app.post_order(Some(&token), &body, None).await?;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(refused.json["status"], 503);
    let retry_after: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()?;
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        orders_in_db(&app).await?,
        3,
        "the refused order was not created"
    );

    // one order finishes (declined): a place opens once a sample sees it
    app.deliver(&event_at(
        Service::Payment,
        PaymentDeclined {
            order_id: open[0],
            amount_cents: 32200,
            reason: "card_declined".into(),
        },
        Utc::now(),
        10,
    ))
    .await?;
    let admitted = jwl_testkit::eventually("an order is admitted again", SOON, || async {
        let reply = app.post_order(Some(&token), &body, None).await.ok()?;
        match reply.status {
            StatusCode::CREATED => Some(reply),
            StatusCode::SERVICE_UNAVAILABLE => None,
            other => panic!("unexpected {other}: {reply:?}"),
        }
    })
    .await?;
    assert_eq!(admitted.status, StatusCode::CREATED);
    assert_eq!(orders_in_db(&app).await?, 4);
    // and the limit holds again: three open
    let refused = app.post_order(Some(&token), &body, None).await?;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused_before_they_cost_a_token() -> anyhow::Result<()>
{
    // two orders at once, then one a second: an anonymous flood must not use them up
    let app = TestApp::start_with(limited(1, 2, 64)).await?;
    let body = order_body();
    let good = app.customer(CUSTOMER);
    // the same claims with one character of the signature changed
    let at = good.len() - 10;
    let swapped = if good.as_bytes()[at] == b'A' {
        "B"
    } else {
        "A"
    };
    let forged = format!("{}{swapped}{}", &good[..at], &good[at + 1..]);
    for token in [None, Some("not-a-jwt"), Some(forged.as_str())] {
        for _ in 0..5 {
            let reply = app.post_order(token, &body, None).await?;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
        }
    }
    for _ in 0..2 {
        let reply = app.post_order(Some(&good), &body, None).await?;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "the burst is intact: {reply:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn one_caller_cannot_take_the_whole_rate() -> anyhow::Result<()> {
    let settings = Settings {
        ingest: IngestLimits {
            caller_rate_per_second: NonZeroU32::new(1).unwrap(),
            caller_burst: NonZeroU32::new(2).unwrap(),
            ..IngestLimits::default()
        },
        ..Settings::default()
    };
    let app = TestApp::start_with(settings).await?;
    let body = order_body();
    let greedy = app.customer(CUSTOMER);
    let started = Instant::now();
    let replies =
        futures::future::try_join_all((0..8).map(|_| app.post_order(Some(&greedy), &body, None)))
            .await?;
    let refilled = started.elapsed().as_secs() + 1;
    let created = replies
        .iter()
        .filter(|reply| reply.status == StatusCode::CREATED)
        .count() as u64;
    assert!((2..=2 + refilled).contains(&created), "{created} created");
    for reply in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
        assert!(reply.header("retry-after").is_some(), "{reply:?}");
        assert!(
            reply.json["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains("one caller")),
            "{reply:?}"
        );
    }
    // another customer is not held back by the first one's bucket
    let other = app.customer(OTHER_CUSTOMER);
    let reply = app.post_order(Some(&other), &body, None).await?;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    Ok(())
}
