//! The command line: subcommands and their flags, each flag also settable by a `JWL_*`
//! environment variable (a flag wins over its variable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use jwl_service_kit::auth::Scope;

use crate::services::ServiceName;

/// Jiangwanli: a choreographed-saga order platform (NATS JetStream + PostgreSQL).
#[derive(Debug, Parser)]
#[command(name = "jwl", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system in one process (starts private NATS and PostgreSQL unless
    /// JWL_NATS_URL / JWL_DATABASE_URL are set).
    Up(UpArgs),
    /// Run one service (production mode: external NATS and PostgreSQL).
    Serve(ServeArgs),
    /// Apply the database migrations of the named services (all when none is named).
    Migrate(MigrateArgs),
    /// Print a signed bearer token (and nothing else) on stdout.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    /// External NATS server; when unset a private `nats-server -js` is started under the data dir.
    #[arg(long, env = "JWL_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    #[command(flatten)]
    pub databases: DatabaseArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The service to run.
    #[arg(value_enum)]
    pub service: ServiceName,
    #[command(flatten)]
    pub http: HttpArgs,
    /// The NATS server (JetStream enabled).
    #[arg(long, env = "JWL_NATS_URL", hide_env_values = true)]
    pub nats_url: String,
    #[command(flatten)]
    pub databases: DatabaseArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// Only used to find the JWT secret file when JWL_JWT_SECRET is unset.
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Services to migrate (default: all five).
    #[arg(value_enum)]
    pub services: Vec<ServiceName>,
    #[command(flatten)]
    pub databases: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The token's subject (customer id, courier id, operator name).
    #[arg(long)]
    pub sub: String,
    /// Scopes to grant: orders:write, orders:read, couriers:write, admin (repeat or list).
    #[arg(long = "scope", required = true, num_args = 1.., value_delimiter = ',')]
    pub scopes: Vec<Scope>,
    /// How long the token is valid (`15m`, `24h`, …).
    #[arg(long, default_value = "1h", value_parser = parse_positive_duration)]
    pub ttl: Duration,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub data_dir: DataDirArgs,
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "JWL_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
}

#[derive(Debug, Args)]
pub struct DataDirArgs {
    /// Where `jwl up` keeps its private NATS and PostgreSQL data and the dev JWT secret.
    #[arg(long, env = "JWL_DATA_DIR", default_value = "./.jwl")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct JwtArgs {
    /// HS256 secret for bearer tokens (default: the `jwt-secret` file in the data dir).
    #[arg(long, env = "JWL_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// The shared database URL and the per-service overrides.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL shared by all services (each uses its own schema).
    #[arg(long, env = "JWL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Database of the order service (overrides JWL_DATABASE_URL).
    #[arg(long, env = "JWL_ORDER_DATABASE_URL", hide_env_values = true)]
    pub order_database_url: Option<String>,
    /// Database of the payment service (overrides JWL_DATABASE_URL).
    #[arg(long, env = "JWL_PAYMENT_DATABASE_URL", hide_env_values = true)]
    pub payment_database_url: Option<String>,
    /// Database of the inventory service (overrides JWL_DATABASE_URL).
    #[arg(long, env = "JWL_INVENTORY_DATABASE_URL", hide_env_values = true)]
    pub inventory_database_url: Option<String>,
    /// Database of the fulfillment service (overrides JWL_DATABASE_URL).
    #[arg(long, env = "JWL_FULFILLMENT_DATABASE_URL", hide_env_values = true)]
    pub fulfillment_database_url: Option<String>,
    /// Database of the dispatch service (overrides JWL_DATABASE_URL).
    #[arg(long, env = "JWL_DISPATCH_DATABASE_URL", hide_env_values = true)]
    pub dispatch_database_url: Option<String>,
}

/// Business tunables (see `jwl_service_kit::Settings`).
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// Time from order creation to courier assignment before the order is cancelled.
    #[arg(long, env = "JWL_ORDER_DEADLINE", default_value = "5m", value_parser = parse_positive_duration)]
    pub order_deadline: Duration,
    /// Time a waybill may wait for a courier.
    #[arg(long, env = "JWL_DISPATCH_DEADLINE", default_value = "60s", value_parser = parse_positive_duration)]
    pub dispatch_deadline: Duration,
    /// Farthest distance (km) between a courier and the pickup point.
    #[arg(long, env = "JWL_DISPATCH_RADIUS_KM", default_value = "5", value_parser = parse_radius_km)]
    pub dispatch_radius_km: f64,
    /// Live waybills per courier.
    #[arg(long, env = "JWL_COURIER_CAPACITY", default_value = "1", value_parser = clap::value_parser!(u32).range(1..))]
    pub courier_capacity: u32,
}

/// A humantime duration (`90s`, `5m`, `1h 30m`) greater than zero.
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        Err("must be greater than zero".to_owned())
    } else {
        Ok(duration)
    }
}

/// A finite number of kilometres greater than zero.
fn parse_radius_km(text: &str) -> Result<f64, String> {
    let km: f64 = text.trim().parse().map_err(|e| format!("{e}"))?;
    if km.is_finite() && km > 0.0 {
        Ok(km)
    } else {
        Err("must be a positive number of kilometres".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_humantime_and_refuse_zero() {
        assert_eq!(parse_positive_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_positive_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("soon").is_err());
    }

    #[test]
    fn radius_must_be_positive_and_finite() {
        assert_eq!(parse_radius_km("2.5"), Ok(2.5));
        for bad in ["0", "-1", "NaN", "inf", "far"] {
            assert!(parse_radius_km(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
