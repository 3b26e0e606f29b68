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

use crate::args::{DatabaseArgs, JwtArgs, NatsSecurityArgs, SettingsArgs};
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
        use clap::Parser;
        let mut args = vec![
            "jwl",
            "serve",
            "payment",
            "--nats-url",
            "nats://127.0.0.1:4222",
        ];
        args.extend_from_slice(extra);
        match crate::args::Cli::try_parse_from(args) {
            Ok(crate::args::Cli {
                command: crate::args::Command::Serve(args),
            }) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nats_secrets_are_not_in_the_debug_output_of_the_arguments() {
        let password = "Pa55-word-not-to-be-shown";
        let token = "t0ken-not-to-be-shown";
        let args = serve_args(&["--nats-user", "jwl-payment", "--nats-password", password]);
        let shown = format!("{args:?}");
        assert!(shown.contains("jwl-payment"), "{shown}");
        assert!(!shown.contains(password), "{shown}");
        let security = args.nats_security.to_security().unwrap();
        assert!(!format!("{security:?}").contains(password));

        let args = serve_args(&["--nats-token", token]);
        assert!(!format!("{args:?}").contains(token));
        assert!(!format!("{:?}", args.nats_security.to_security().unwrap()).contains(token));
    }

    #[test]
    fn nats_settings_name_one_credential_and_empty_values_count_as_unset() {
        let none = serve_args(&[]).nats_security.to_security().unwrap();
        assert!(matches!(none.credentials, NatsCredentials::None));
        assert!(!none.tls.is_required());

        let empty = serve_args(&["--nats-user", "", "--nats-tls-ca-file", ""])
            .nats_security
            .to_security()
            .unwrap();
        assert!(matches!(empty.credentials, NatsCredentials::None));
        assert_eq!(empty.tls, NatsTls::default());

        let both = serve_args(&["--nats-token", "t", "--nats-creds-file", "/x.creds"])
            .nats_security
            .to_security()
            .unwrap_err()
            .to_string();
        assert!(both.contains("JWL_NATS_TOKEN"), "{both}");
        assert!(both.contains("JWL_NATS_CREDS_FILE"), "{both}");

        let tls = serve_args(&["--nats-tls-required"])
            .nats_security
            .to_security()
            .unwrap();
        assert!(tls.tls.is_required());
    }
}
