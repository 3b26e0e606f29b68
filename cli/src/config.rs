//! Turning parsed arguments into what the services need: [`Settings`], the database URL of
//! each service (its own override, else the shared one), and the JWT keys.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use jwl_service_kit::Settings;
use jwl_service_kit::auth::JwtKeys;
use jwl_service_kit::auth::MIN_SECRET_BYTES;
use jwl_service_kit::breaker::BreakerSettings;
use jwl_service_kit::config::ProcessorSettings;
use jwl_service_kit::http::IngestLimits;
use jwl_service_kit::http::admission::BacklogLimits;

use jwl_outbox::transport::nats::{CredentialSettings, NatsCredentials, NatsSecurity, NatsTls};
use secrecy::{ExposeSecret, SecretString};

use crate::args::{BrokerArgs, BrokerKind, DatabaseArgs, JwtArgs, NatsSecurityArgs, SettingsArgs};
use crate::secret;
use crate::services::ServiceName;

impl SettingsArgs {
    pub fn to_settings(&self) -> Arc<Settings> {
        Arc::new(Settings {
            order_deadline: self.order_deadline,
            dispatch_deadline: self.dispatch_deadline,
            dispatch_radius_km: self.dispatch_radius_km,
            courier_capacity: self.courier_capacity,
            idempotency_ttl: self.idempotency_ttl,
            ingest: IngestLimits {
                rate_per_second: self.ingest_rate,
                burst: self.ingest_burst,
                max_in_flight: self.ingest_in_flight,
                caller_rate_per_second: self.ingest_caller_rate,
                caller_burst: self.ingest_caller_burst,
                backlog: BacklogLimits {
                    target: self.admission_target.0,
                    min_open: self.admission_min_open,
                },
            },
            processor: ProcessorSettings {
                timeout: self.processor_timeout,
                error_rate: self.processor_error_rate,
                timeout_rate: self.processor_timeout_rate,
                latency: self.processor_latency,
                slowdown: self.processor_slowdown,
                breaker: BreakerSettings {
                    window: self.processor_breaker_window,
                    min_calls: self.processor_breaker_min_calls,
                    open_for: self.processor_breaker_open_for,
                    min_error_rate: self.processor_breaker_min_error_rate,
                    min_p99: self.processor_breaker_min_p99,
                },
            },
            console_peers: self.console_peers.clone().unwrap_or_default(),
        })
    }
}

impl DatabaseArgs {
    /// The URL `service` uses: `JWL_<SERVICE>_DATABASE_URL`, else `JWL_DATABASE_URL`.
    pub fn url_for(&self, service: ServiceName) -> Option<&str> {
        let own = match service {
            ServiceName::Order => &self.order_database_url,
            ServiceName::Payment => &self.payment_database_url,
            ServiceName::Inventory => &self.inventory_database_url,
            ServiceName::Fulfillment => &self.fulfillment_database_url,
            ServiceName::Dispatch => &self.dispatch_database_url,
        };
        non_empty(own).or_else(|| non_empty(&self.database_url))
    }

    /// [`Self::url_for`], or an error naming both variables.
    pub fn require_url_for(&self, service: ServiceName) -> anyhow::Result<&str> {
        self.url_for(service).with_context(|| {
            format!(
                "no database for the {service} service: set JWL_{upper}_DATABASE_URL or JWL_DATABASE_URL \
                 (or --{service}-database-url / --database-url)",
                upper = service.as_str().to_ascii_uppercase()
            )
        })
    }
}

/// The broker a process connects to, resolved from [`BrokerArgs`].
#[derive(Debug, Clone)]
pub enum BrokerTarget {
    /// NATS JetStream at `url` (one URL or a comma-separated list of cluster nodes).
    Nats { url: String, security: NatsSecurity },
    /// Kafka at `brokers` (`host:port` separated by commas), creating topics with `partitions`
    /// partitions (`None`: the transport's default).
    Kafka {
        brokers: String,
        partitions: Option<i32>,
    },
}

impl BrokerTarget {
    /// The variables an operator tool needs to reach this broker (credentials of a NATS URL
    /// are never shown).
    pub fn operator_env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Nats { url, .. } => vec![(
                "JWL_NATS_URL",
                jwl_outbox::transport::nats::redact_userinfo(url),
            )],
            Self::Kafka { brokers, .. } => vec![
                ("JWL_BROKER", "kafka".to_owned()),
                ("JWL_KAFKA_BROKERS", brokers.clone()),
            ],
        }
    }
}

impl BrokerArgs {
    /// `JWL_NATS_URL`, trimmed; an empty value counts as unset.
    pub fn nats_url(&self) -> Option<&str> {
        non_empty(&self.nats_url).map(str::trim)
    }

    /// `JWL_KAFKA_BROKERS`, trimmed; an empty value counts as unset.
    pub fn kafka_brokers(&self) -> Option<&str> {
        non_empty(&self.kafka_brokers).map(str::trim)
    }

    /// The broker to connect to, with `nats_url` / `kafka_brokers` standing in for the
    /// missing address of the chosen broker (`jwl up`'s private servers). Fails when the chosen
    /// broker has no address, or its NATS security settings are invalid.
    pub fn target_or(
        &self,
        nats_url: Option<String>,
        kafka_brokers: Option<String>,
    ) -> anyhow::Result<BrokerTarget> {
        match self.kind {
            BrokerKind::Nats => {
                if self.kafka_brokers().is_some() {
                    tracing::warn!(
                        "JWL_KAFKA_BROKERS is ignored: the broker is NATS (set JWL_BROKER=kafka to use Kafka)"
                    );
                }
                let url = self
                    .nats_url()
                    .map(str::to_owned)
                    .or(nats_url)
                    .context("no NATS server: set JWL_NATS_URL (or --nats-url), or JWL_BROKER=kafka with JWL_KAFKA_BROKERS")?;
                Ok(BrokerTarget::Nats {
                    url,
                    security: self.nats_security.to_security()?,
                })
            }
            BrokerKind::Kafka => {
                if self.nats_url().is_some() {
                    tracing::warn!(
                        "JWL_NATS_URL and the other NATS settings are ignored: the broker is Kafka (JWL_BROKER=kafka)"
                    );
                }
                let brokers = self
                    .kafka_brokers()
                    .map(str::to_owned)
                    .or(kafka_brokers)
                    .context("JWL_BROKER=kafka needs the Kafka bootstrap brokers: set JWL_KAFKA_BROKERS (or --kafka-brokers), e.g. 127.0.0.1:9092")?;
                Ok(BrokerTarget::Kafka {
                    brokers,
                    partitions: self.kafka_partitions,
                })
            }
        }
    }

    /// The configured broker (see [`Self::target_or`]).
    pub fn target(&self) -> anyhow::Result<BrokerTarget> {
        self.target_or(None, None)
    }
}

impl NatsSecurityArgs {
    /// The credentials and TLS of the NATS connection; an empty variable counts as unset.
    pub fn to_security(&self) -> anyhow::Result<NatsSecurity> {
        let path = |value: &Option<std::path::PathBuf>| {
            value.clone().filter(|path| !path.as_os_str().is_empty())
        };
        let secret = |value: &Option<SecretString>| {
            value
                .clone()
                .filter(|secret| !secret.expose_secret().is_empty())
        };
        let credentials = NatsCredentials::from_settings(CredentialSettings {
            user: non_empty(&self.nats_user).map(str::to_owned),
            password: secret(&self.nats_password),
            token: secret(&self.nats_token),
            nkey_seed_file: path(&self.nats_nkey_seed_file),
            creds_file: path(&self.nats_creds_file),
        })?;
        Ok(NatsSecurity {
            credentials,
            tls: NatsTls {
                ca_file: path(&self.nats_tls_ca_file),
                cert_file: path(&self.nats_tls_cert_file),
                key_file: path(&self.nats_tls_key_file),
                required: self.nats_tls_required,
            },
        })
    }
}

impl JwtArgs {
    /// Keys from `JWL_JWT_SECRET`, else from the secret file in `data_dir` (which must exist).
    pub fn load_keys(&self, data_dir: &Path) -> anyhow::Result<JwtKeys> {
        let secret = match non_empty(&self.jwt_secret) {
            Some(secret) => secret.to_owned(),
            None => secret::read(data_dir)?,
        };
        Ok(self.with_claims(keys_from(&secret)?))
    }

    /// Keys from `JWL_JWT_SECRET`, else from the secret file in `data_dir`, generated if missing.
    pub fn load_or_generate_keys(&self, data_dir: &Path) -> anyhow::Result<JwtKeys> {
        let secret = match non_empty(&self.jwt_secret) {
            Some(secret) => secret.to_owned(),
            None => secret::read_or_generate(data_dir)?,
        };
        Ok(self.with_claims(keys_from(&secret)?))
    }

    /// `keys` issuing and requiring the configured `iss` and `aud` (`JWL_JWT_ISSUER`,
    /// `JWL_JWT_AUDIENCE`), where set.
    fn with_claims(&self, mut keys: JwtKeys) -> JwtKeys {
        if let Some(issuer) = non_empty(&self.jwt_issuer) {
            keys = keys.with_issuer(issuer);
        }
        if let Some(audience) = non_empty(&self.jwt_audience) {
            keys = keys.with_audience(audience);
        }
        keys
    }
}

/// Keys for `secret`, refused when it is shorter than [`MIN_SECRET_BYTES`].
fn keys_from(secret: &str) -> anyhow::Result<JwtKeys> {
    anyhow::ensure!(
        secret.len() >= MIN_SECRET_BYTES,
        "the JWT secret (JWL_JWT_SECRET or the data dir's jwt-secret file) is {} bytes; it must \
         be at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
        secret.len()
    );
    Ok(JwtKeys::new(secret.as_bytes()))
}

/// An unset or empty variable counts as unset.
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn databases(shared: Option<&str>, payment: Option<&str>) -> DatabaseArgs {
        DatabaseArgs {
            database_url: shared.map(str::to_owned),
            order_database_url: None,
            payment_database_url: payment.map(str::to_owned),
            inventory_database_url: None,
            fulfillment_database_url: Some(String::new()),
            dispatch_database_url: None,
        }
    }

    #[test]
    fn per_service_url_overrides_the_shared_one() {
        let dbs = databases(Some("postgres://shared/jwl"), Some("postgres://pay/jwl"));
        assert_eq!(
            dbs.url_for(ServiceName::Payment),
            Some("postgres://pay/jwl")
        );
        assert_eq!(
            dbs.url_for(ServiceName::Order),
            Some("postgres://shared/jwl")
        );
        // An empty override counts as unset.
        assert_eq!(
            dbs.url_for(ServiceName::Fulfillment),
            Some("postgres://shared/jwl")
        );
    }

    #[test]
    fn missing_url_names_the_variables() {
        let dbs = databases(None, Some("postgres://pay/jwl"));
        assert!(dbs.require_url_for(ServiceName::Payment).is_ok());
        let message = dbs
            .require_url_for(ServiceName::Dispatch)
            .unwrap_err()
            .to_string();
        assert!(message.contains("JWL_DISPATCH_DATABASE_URL"), "{message}");
        assert!(message.contains("JWL_DATABASE_URL"), "{message}");
    }

    fn serve_args(extra: &[&str]) -> crate::args::ServeArgs {
        let mut args = vec!["--nats-url", "nats://127.0.0.1:4222"];
        args.extend_from_slice(extra);
        parse_serve(&args).unwrap()
    }

    /// `jwl serve payment <args>` (no environment involved: the flags only).
    fn parse_serve(args: &[&str]) -> Result<crate::args::ServeArgs, String> {
        use clap::Parser;
        let mut all = vec!["jwl", "serve", "payment"];
        all.extend_from_slice(args);
        match crate::args::Cli::try_parse_from(all) {
            Ok(crate::args::Cli {
                command: crate::args::Command::Serve(args),
            }) => Ok(args),
            Ok(other) => panic!("{other:?}"),
            Err(error) => Err(error.to_string()),
        }
    }

    #[test]
    fn the_broker_is_nats_by_default_and_needs_its_url() {
        let args = serve_args(&[]);
        assert_eq!(args.broker.kind, BrokerKind::Nats);
        match args.broker.target().unwrap() {
            BrokerTarget::Nats { url, .. } => assert_eq!(url, "nats://127.0.0.1:4222"),
            other => panic!("{other:?}"),
        }
        let message = parse_serve(&[])
            .unwrap()
            .broker
            .target()
            .unwrap_err()
            .to_string();
        assert!(message.contains("JWL_NATS_URL"), "{message}");
        // an empty URL counts as unset; `jwl up`'s private server stands in for it
        let empty = parse_serve(&["--nats-url", " "]).unwrap();
        assert!(empty.broker.target().is_err());
        let private = empty
            .broker
            .target_or(Some("nats://127.0.0.1:4999".to_owned()), None)
            .unwrap();
        assert!(
            matches!(private, BrokerTarget::Nats { url, .. } if url == "nats://127.0.0.1:4999")
        );
    }

    #[test]
    fn kafka_is_chosen_with_its_bootstrap_brokers_and_ignores_the_nats_url() {
        let args = serve_args(&[
            "--broker",
            "kafka",
            "--kafka-brokers",
            " 10.0.0.1:9092,10.0.0.2:9092 ",
        ]);
        assert_eq!(args.broker.kind, BrokerKind::Kafka);
        let target = args.broker.target().unwrap();
        assert!(
            matches!(&target, BrokerTarget::Kafka { brokers, partitions: None } if brokers == "10.0.0.1:9092,10.0.0.2:9092"),
            "{target:?}"
        );
        assert_eq!(
            target.operator_env(),
            [
                ("JWL_BROKER", "kafka".to_owned()),
                (
                    "JWL_KAFKA_BROKERS",
                    "10.0.0.1:9092,10.0.0.2:9092".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn kafka_without_bootstrap_brokers_is_a_clear_error() {
        for args in [
            &["--broker", "kafka"][..],
            &["--broker", "kafka", "--kafka-brokers", ""][..],
        ] {
            let message = parse_serve(args)
                .unwrap()
                .broker
                .target()
                .unwrap_err()
                .to_string();
            assert!(message.contains("JWL_KAFKA_BROKERS"), "{message}");
        }
        let private = parse_serve(&["--broker", "kafka"])
            .unwrap()
            .broker
            .target_or(None, Some("127.0.0.1:9999".to_owned()))
            .unwrap();
        assert!(
            matches!(&private, BrokerTarget::Kafka { brokers, partitions: None } if brokers == "127.0.0.1:9999")
        );
        let configured = parse_serve(&["--broker", "kafka", "--kafka-partitions", "3"])
            .unwrap()
            .broker
            .target_or(None, Some("127.0.0.1:9999".to_owned()))
            .unwrap();
        assert!(matches!(
            configured,
            BrokerTarget::Kafka {
                partitions: Some(3),
                ..
            }
        ));
        assert!(parse_serve(&["--broker", "kafka", "--kafka-partitions", "0"]).is_err());
    }

    #[test]
    fn the_broker_name_ignores_case_and_an_empty_one_is_nats() {
        let kind = |value: &str| parse_serve(&["--broker", value]).unwrap().broker.kind;
        assert_eq!(kind("KAFKA"), BrokerKind::Kafka);
        assert_eq!(kind(" nats "), BrokerKind::Nats);
        assert_eq!(kind(""), BrokerKind::Nats);
    }

    #[test]
    fn an_unknown_broker_is_refused_with_the_choices() {
        let message = parse_serve(&["--broker", "rabbitmq"]).unwrap_err();
        assert!(
            message.contains("nats") && message.contains("kafka"),
            "{message}"
        );
    }

    #[test]
    fn the_nats_operator_env_hides_credentials() {
        let target = BrokerTarget::Nats {
            url: "nats://jwl:s3cret@127.0.0.1:4222".to_owned(),
            security: NatsSecurity::default(),
        };
        let env = target.operator_env();
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].0, "JWL_NATS_URL");
        assert!(!env[0].1.contains("s3cret"), "{env:?}");
    }

    #[test]
    fn nats_secrets_are_not_in_the_debug_output_of_the_arguments() {
        let password = "Pa55-word-not-to-be-shown";
        let token = "t0ken-not-to-be-shown";
        let args = serve_args(&["--nats-user", "jwl-payment", "--nats-password", password]);
        let shown = format!("{args:?}");
        assert!(shown.contains("jwl-payment"), "{shown}");
        assert!(!shown.contains(password), "{shown}");
        let security = args.broker.nats_security.to_security().unwrap();
        assert!(!format!("{security:?}").contains(password));

        let args = serve_args(&["--nats-token", token]);
        assert!(!format!("{args:?}").contains(token));
        assert!(!format!("{:?}", args.broker.nats_security.to_security().unwrap()).contains(token));
    }

    #[test]
    fn nats_settings_name_one_credential_and_empty_values_count_as_unset() {
        let none = serve_args(&[]).broker.nats_security.to_security().unwrap();
        assert!(matches!(none.credentials, NatsCredentials::None));
        assert!(!none.tls.is_required());

        let empty = serve_args(&["--nats-user", "", "--nats-tls-ca-file", ""])
            .broker
            .nats_security
            .to_security()
            .unwrap();
        assert!(matches!(empty.credentials, NatsCredentials::None));
        assert_eq!(empty.tls, NatsTls::default());

        let both = serve_args(&["--nats-token", "t", "--nats-creds-file", "/x.creds"])
            .broker
            .nats_security
            .to_security()
            .unwrap_err()
            .to_string();
        assert!(both.contains("JWL_NATS_TOKEN"), "{both}");
        assert!(both.contains("JWL_NATS_CREDS_FILE"), "{both}");

        let tls = serve_args(&["--nats-tls-required"])
            .broker
            .nats_security
            .to_security()
            .unwrap();
        assert!(tls.tls.is_required());
    }
}
