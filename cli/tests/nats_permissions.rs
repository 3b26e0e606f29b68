//! `deploy/nats/jwl-auth.conf` against the code: each service's user may publish exactly what
//! the service needs — its own event types (and no other service's), the dead letters of its
//! consumers, the JetStream API calls on the streams and its durable consumers, their acks — and
//! subscribe only to its inboxes. Derived here from the subject scheme, the stream names, the
//! consumer names and every service's subscriptions, so a new subscription or stream without its
//! permission fails this test (the saga over the secured bus, tests/e2e/tests/secure_bus.rs,
//! only exercises the paths one order takes).

use std::collections::{BTreeMap, BTreeSet};

use jwl_events::{EventType, Service};
use jwl_outbox::{MessagingSettings, durable_name, events_durable};

const AUTH_CONF: &str = include_str!("../../deploy/nats/jwl-auth.conf");

/// The publish and subscribe allow lists of each permissions block (`ORDER = { … }`).
#[derive(Debug, Default)]
struct Permissions {
    publish: BTreeSet<String>,
    subscribe: BTreeSet<String>,
}

fn parse(conf: &str) -> BTreeMap<String, Permissions> {
    let mut blocks: BTreeMap<String, Permissions> = BTreeMap::new();
    let mut block: Option<String> = None;
    let mut publish = true;
    for line in conf.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_suffix(" = {") {
            if name.chars().all(|c| c.is_ascii_uppercase()) {
                block = Some(name.to_owned());
                continue;
            }
            publish = match name {
                "publish" => true,
                "subscribe" => false,
                _ => publish,
            };
        }
        if line.starts_with("users") {
            block = None;
        }
        let (Some(name), Some(subject)) = (
            &block,
            line.strip_prefix('"').and_then(|l| l.strip_suffix('"')),
        ) else {
            continue;
        };
        let entry = blocks.entry(name.clone()).or_default();
        if publish {
            entry.publish.insert(subject.to_owned());
        } else {
            entry.subscribe.insert(subject.to_owned());
        }
    }
    blocks
}

fn subscriptions(service: Service) -> &'static [EventType] {
    match service {
        Service::Order => jwl_order::SUBSCRIPTIONS,
        Service::Payment => jwl_payment::SUBSCRIPTIONS,
        Service::Inventory => jwl_inventory::SUBSCRIPTIONS,
        Service::Fulfillment => jwl_fulfillment::SUBSCRIPTIONS,
        Service::Dispatch => jwl_dispatch::SUBSCRIPTIONS,
    }
}

/// What `service` publishes, from the code.
fn needed(service: Service) -> BTreeSet<String> {
    let settings = MessagingSettings::default();
    let events = events_durable(service);
    let replay = format!("{service}__replay");
    let per_type: Vec<String> = subscriptions(service)
        .iter()
        .map(|&ty| durable_name(service, ty))
        .collect();
    let mut subjects = BTreeSet::new();
    // its own types, in the subject layout and the legacy one (outbox rows written before an
    // upgrade still carry it)
    subjects.insert(format!("jwl.evt.{service}.*.*"));
    subjects.insert(format!("jwl.evt.*.{service}.*"));
    for consumer in per_type.iter().chain([&events, &replay]) {
        subjects.insert(format!("jwl.dlq.{consumer}.*"));
    }
    for stream in [
        &settings.events_stream,
        &settings.dlq_stream,
        &settings.replay_stream,
        &settings.dlq_log_stream,
    ] {
        for call in ["INFO", "CREATE", "UPDATE"] {
            subjects.insert(format!("$JS.API.STREAM.{call}.{stream}"));
        }
    }
    for (stream, consumer) in [
        (&settings.events_stream, &events),
        (&settings.replay_stream, &replay),
    ] {
        for call in ["INFO", "CREATE", "DURABLE.CREATE", "MSG.NEXT"] {
            subjects.insert(format!("$JS.API.CONSUMER.{call}.{stream}.{consumer}"));
        }
        // a consumer with one filter subject is created on `….<consumer>.<filter>`
        subjects.insert(format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>"));
        subjects.insert(format!("$JS.ACK.{stream}.{consumer}.>"));
    }
    // the per-type durables of earlier versions, superseded by <service>__events
    for consumer in &per_type {
        for call in ["INFO", "DELETE"] {
            subjects.insert(format!(
                "$JS.API.CONSUMER.{call}.{}.{consumer}",
                settings.events_stream
            ));
        }
    }
    subjects
}

#[test]
fn each_service_may_publish_exactly_what_it_needs() {
    let blocks = parse(AUTH_CONF);
    for service in Service::ALL {
        let name = service.as_str().to_ascii_uppercase();
        let granted = blocks
            .get(&name)
            .unwrap_or_else(|| panic!("jwl-auth.conf has no {name} permissions"));
        let needed = needed(service);
        let missing: Vec<_> = needed.difference(&granted.publish).collect();
        let extra: Vec<_> = granted.publish.difference(&needed).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: missing {missing:?}, not needed {extra:?}"
        );
        assert_eq!(
            granted.subscribe,
            BTreeSet::from(["_INBOX.>".to_owned()]),
            "{name}"
        );
        assert!(
            AUTH_CONF.contains(&format!(
                "{{ user: jwl-{service}, password: $JWL_NATS_{name}_PASSWORD, permissions: ${name} }}"
            )),
            "no user jwl-{service} with the {name} permissions"
        );
    }
}

#[test]
fn a_service_may_publish_its_own_event_types_and_no_other() {
    let matches = |pattern: &str, subject: &str| {
        let (pattern, subject): (Vec<_>, Vec<_>) =
            (pattern.split('.').collect(), subject.split('.').collect());
        pattern.len() == subject.len()
            && pattern
                .iter()
                .zip(&subject)
                .all(|(p, s)| *p == "*" || p == s)
    };
    let order = jwl_events::OrderId::new();
    for service in Service::ALL {
        let own = [
            format!("jwl.evt.{service}.*.*"),
            format!("jwl.evt.*.{service}.*"),
        ];
        for ty in EventType::ALL {
            for subject in jwl_events::subjects_of(&order, ty) {
                assert_eq!(
                    own.iter().any(|own| matches(own, &subject)),
                    ty.emitter() == service,
                    "{own:?} and {subject}"
                );
            }
        }
    }
}

#[test]
fn the_operator_may_redeliver_and_record_but_not_publish_events_or_dead_letters() {
    let blocks = parse(AUTH_CONF);
    let operator = blocks.get("OPERATOR").expect("OPERATOR permissions");
    for needed in ["jwl.replay.>", "jwl.dlqlog.>", "$JS.API.>"] {
        assert!(operator.publish.contains(needed), "{needed}");
    }
    assert!(
        operator
            .publish
            .iter()
            .all(|subject| !subject.starts_with("jwl.evt") && !subject.starts_with("jwl.dlq.")),
        "{:?}",
        operator.publish
    );
}
