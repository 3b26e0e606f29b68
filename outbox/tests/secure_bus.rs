//! The broker on a real nats-server secured as `deploy/nats/` ships it: TLS required with
//! client certificates (made by the test with rcgen), one user per service with the
//! deployment's permissions. A service connects with its user, password and certificate and
//! provisions the streams; it may publish its own event types, and publishing another service's
//! is refused by the server as a permissions violation, surfaced at once as
//! `TransportError::Denied`. A wrong password, no credentials, a server certificate the client
//! does not trust, or no client certificate fail the connection at once with a message that says
//! so (no background retry loop, no hang), and the password appears in no error nor in any
//! `Debug` output. A server that only comes up after the client started and then refuses is
//! reported by the background connection (what `jwl serve` stops on).

use std::time::Duration;

use bytes::Bytes;
use jwl_events::{EventType, OrderId};
use jwl_outbox::transport::nats::{NatsCredentials, NatsSecurity, NatsTls};
use jwl_outbox::transport::{OutboundMessage, Publisher};
use jwl_outbox::{JetStreamBroker, MessagingSettings, TransportError};
use jwl_testkit::{SecureNats, secure_nats};
use secrecy::SecretString;

/// A refused connection must fail well within this (a hang or a retry loop would not).
const REFUSAL_BOUND: Duration = Duration::from_secs(10);

fn message(ty: EventType) -> OutboundMessage {
    let order = OrderId::new();
    OutboundMessage {
        dedup_id: uuid::Uuid::new_v4().to_string(),
        subject: jwl_events::subject(&order, ty),
        headers: Vec::new(),
        payload: Bytes::from_static(b"{}"),
    }
}

async fn connect(nats: &SecureNats, security: &NatsSecurity) -> Result<JetStreamBroker, String> {
    tokio::time::timeout(
        REFUSAL_BOUND,
        JetStreamBroker::connect_secured(nats.url(), "jwl-test", security),
    )
    .await
    .map_err(|_| format!("no answer within {REFUSAL_BOUND:?}"))?
    .map_err(|error| error.to_string())
}

async fn refusal(nats: &SecureNats, security: &NatsSecurity) -> String {
    match connect(nats, security).await {
        Ok(_) => panic!("the connection was accepted"),
        Err(error) => error,
    }
}

#[tokio::test]
async fn a_service_publishes_its_own_events_and_is_denied_another_services() -> anyhow::Result<()> {
    let nats = secure_nats().await?;
    let broker =
        JetStreamBroker::connect_secured(nats.url(), "jwl-payment", &nats.security("payment")?)
            .await?;
    assert!(broker.is_healthy());
    broker.ensure_streams(&MessagingSettings::default()).await?;

    let own = broker
        .publish_batch(&[message(EventType::PaymentAuthorized)])
        .await;
    assert!(
        matches!(own[0], Ok(receipt) if !receipt.duplicate),
        "{own:?}"
    );

    let started = tokio::time::Instant::now();
    let forged = broker
        .publish_batch(&[
            message(EventType::OrderCreated),
            message(EventType::PaymentCaptured),
        ])
        .await;
    match &forged[0] {
        Err(TransportError::Denied { subject }) => {
            assert_eq!(
                jwl_events::subject_type(subject),
                Some(EventType::OrderCreated),
                "{subject}"
            );
        }
        other => panic!("publishing order.created as payment: {other:?}"),
    }
    let shown = forged[0].as_ref().unwrap_err().to_string();
    assert!(shown.contains("permissions violation"), "{shown}");
    // the server says so at once; the publish does not wait for an ack timeout
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    println!("a denied publish failed after {took:?}");
    assert!(forged[1].is_ok(), "{:?}", forged[1]);
    // the connection survives a denial
    assert!(broker.is_healthy());
    Ok(())
}

#[tokio::test]
async fn wrong_or_missing_credentials_fail_at_once_and_say_so() -> anyhow::Result<()> {
    let nats = secure_nats().await?;
    let wrong_password = "wrong-Pa55word-that-must-not-leak";
    let wrong = NatsSecurity {
        credentials: NatsCredentials::UserPassword {
            user: "jwl-order".to_owned(),
            password: SecretString::from(wrong_password),
        },
        tls: nats.tls(),
    };
    let error = refusal(&nats, &wrong).await;
    assert!(error.contains("authorization violation"), "{error}");
    assert!(error.contains("jwl-order"), "{error}");
    assert!(!error.contains(wrong_password), "{error}");
    assert!(!format!("{wrong:?}").contains(wrong_password));

    let anonymous = NatsSecurity {
        credentials: NatsCredentials::None,
        tls: nats.tls(),
    };
    let error = refusal(&nats, &anonymous).await;
    assert!(error.contains("authorization violation"), "{error}");
    assert!(error.contains("no credentials"), "{error}");

    // the password in the URL's userinfo is used, and shown nowhere
    let password = nats.password("inventory")?;
    let url = nats
        .url()
        .replace("nats://", &format!("nats://jwl-inventory:{password}@"));
    let with_tls = NatsSecurity {
        credentials: NatsCredentials::None,
        tls: nats.tls(),
    };
    let broker = JetStreamBroker::connect_secured(&url, "jwl-inventory", &with_tls).await?;
    assert!(broker.is_healthy());
    assert!(!format!("{broker:?}").contains(password));
    let wrong_url = nats.url().replace(
        "nats://",
        &format!("nats://jwl-inventory:{wrong_password}@"),
    );
    let error = match tokio::time::timeout(
        REFUSAL_BOUND,
        JetStreamBroker::connect_secured(&wrong_url, "jwl-inventory", &with_tls),
    )
    .await
    {
        Ok(Err(error)) => error.to_string(),
        other => panic!("a wrong password in the URL: {other:?}"),
    };
    assert!(error.contains("authorization violation"), "{error}");
    assert!(!error.contains(wrong_password), "{error}");
    Ok(())
}

#[tokio::test]
async fn an_untrusted_server_or_no_client_certificate_fails_the_handshake_at_once()
-> anyhow::Result<()> {
    let nats = secure_nats().await?;
    let mut credentials = nats.security("dispatch")?;
    // trusting another certificate than the CA that issued the server's
    credentials.tls = NatsTls {
        ca_file: Some(nats.pki().client_cert_file.clone()),
        ..nats.tls()
    };
    let error = refusal(&nats, &credentials).await;
    assert!(error.contains("TLS handshake failed"), "{error}");
    assert!(error.contains("certificate"), "{error}");
    assert!(!error.contains(nats.password("dispatch")?), "{error}");

    // no client certificate, for a server that verifies clients
    credentials.tls = NatsTls {
        cert_file: None,
        key_file: None,
        ..nats.tls()
    };
    let error = refusal(&nats, &credentials).await;
    assert!(error.contains("TLS handshake failed"), "{error}");
    assert!(error.contains("CertificateRequired"), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_server_that_comes_up_later_and_refuses_the_credentials_is_reported() -> anyhow::Result<()>
{
    let nats = secure_nats().await?;
    nats.server().stop().await?;
    let wrong = NatsSecurity {
        credentials: NatsCredentials::UserPassword {
            user: "jwl-fulfillment".to_owned(),
            password: SecretString::from("wrong-Pa55word"),
        },
        tls: nats.tls(),
    };
    // nothing listens yet: the connection is made in the background, as without security
    let broker = connect(&nats, &wrong).await.map_err(anyhow::Error::msg)?;
    assert!(!broker.is_healthy());
    nats.server().start_again().await?;
    let last = jwl_testkit::eventually(
        "the background connection reports the refusal",
        REFUSAL_BOUND,
        || async {
            broker
                .last_connect_error()
                .filter(|error| error.contains("authorization violation"))
        },
    )
    .await?;
    assert!(!last.contains("wrong-Pa55word"), "{last}");
    assert!(!broker.is_healthy());
    Ok(())
}
