//! [`System`]: a private NATS server (or a private JetStream cluster of several, or a private
//! tansu for Kafka), a fresh database and the five services, each a `jwl serve <name>` child
//! process, plus the clients a test drives them with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use jwl_events::Service;
use jwl_outbox::transport::nats::NatsSecurity;
use jwl_testkit::{
    SecureNats, TestCluster, TestDatabase, TestNats, TestNatsCluster, TestTansu, eventually,
};

use crate::api::{ApiClient, NewOrder, OrderView};
use crate::binary::jwl_binary;
use crate::broker::Broker;
use crate::geo::Point;
use crate::invariants::PlacedOrder;
use crate::process::ServiceProcess;
use crate::proxy::{Link, Proxy, address_of, reroute};
use crate::store::Store;
use crate::tokens::Tokens;

/// Lines of each service log shown by [`System::dump_logs_tail`] and on a failing test.
const TAIL_LINES: usize = 40;
/// Orders placed at once by [`System::place_orders`].
const PLACE_CONCURRENCY: usize = 64;

/// Which broker the system runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BrokerKind {
    /// NATS JetStream: a private `nats-server -js` (or a cluster, or a secured server).
    #[default]
    Nats,
    /// Kafka: a private tansu with SQLite storage (so that a restart keeps the topics, offsets
    /// and groups); the services get `JWL_BROKER=kafka` and `JWL_KAFKA_BROKERS`. tansu is
    /// optional (`scripts/install-deps` builds it): without it [`with_system`] skips the test.
    Kafka,
}

impl BrokerKind {
    /// Whether this broker can be started here: NATS always, Kafka when tansu is installed
    /// (else says why on stderr).
    pub fn available(self) -> bool {
        match self {
            Self::Nats => true,
            Self::Kafka => match jwl_local_infra::find_binary("tansu") {
                Ok(_) => true,
                Err(error) => {
                    eprintln!("skipping: {error}");
                    false
                }
            },
        }
    }
}

impl std::fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Nats => "nats",
            Self::Kafka => "kafka",
        })
    }
}

/// The business settings the services are started with (`JWL_*` variables).
#[derive(Debug, Clone, PartialEq)]
pub struct SystemOptions {
    /// The broker: NATS (the default) or Kafka. The NATS-only options ([`Self::nats_nodes`],
    /// [`Self::secure_bus`], a proxied [`Link::Nats`]) need NATS.
    pub broker: BrokerKind,
    /// `JWL_DISPATCH_DEADLINE`: how long a waybill waits for a courier.
    pub dispatch_deadline: Duration,
    /// `JWL_ORDER_DEADLINE`: how long an order may take before it is cancelled.
    pub order_deadline: Duration,
    /// `JWL_DISPATCH_RADIUS_KM`.
    pub dispatch_radius_km: f64,
    /// `JWL_COURIER_CAPACITY`: live waybills per courier.
    pub courier_capacity: u32,
    /// `JWL_ACK_WAIT`: how long the broker waits for an ack before redelivering (what a
    /// message handled by a killed service waits; keep it above the longest batch handling).
    /// NATS only: on Kafka a killed consumer's partitions move on when its session times out.
    pub ack_wait: Duration,
    /// `JWL_DB_STALL_TIMEOUT`: how long a service waits on a database connection that stopped
    /// answering before giving it up (and PostgreSQL a silent session holding locks or the
    /// relay lease).
    pub db_stall_timeout: Duration,
    /// Run the database in a PostgreSQL cluster of this system's own ([`System::cluster`]), so
    /// that the test may stop it; otherwise in the cluster shared by the test process.
    pub private_cluster: bool,
    /// Connections routed through a proxy of their own ([`System::proxy`]), so that the test may
    /// cut them: the service gets the proxy's address in `JWL_NATS_URL` or
    /// `JWL_<SERVICE>_DATABASE_URL`.
    pub proxied: Vec<(Service, Link)>,
    /// `JWL_ADMISSION_MIN_OPEN`: open orders intake always admits.
    pub admission_min_open: u32,
    /// NATS nodes: 1 is one private server; more is a private JetStream cluster of that many
    /// nodes ([`System::nats_cluster`]), every node listed in the services' `JWL_NATS_URL`.
    pub nats_nodes: usize,
    /// `JWL_STREAM_REPLICAS` of the services.
    pub stream_replicas: usize,
    /// `jwl serve` processes of each service ([`System::replicas`]); the test's HTTP calls go to
    /// the first.
    pub replicas: usize,
    /// `JWL_OUTBOX_PARTITIONS` of the services.
    pub outbox_partitions: usize,
    /// `RUST_LOG` of the services.
    pub log_filter: String,
    /// Give each service a database of its own (`JWL_<SERVICE>_DATABASE_URL`), as a deployment
    /// does, instead of one database holding the five schemas; [`System::database`] is then the
    /// order service's.
    pub database_per_service: bool,
    /// A secured bus ([`jwl_testkit::secure_nats`]): one server requiring TLS and client
    /// certificates, with the users and permissions of `deploy/nats/jwl-auth.conf`; each
    /// service connects as its own user, the test's broker client as the operator.
    pub secure_bus: bool,
    /// More variables for every service process (e.g. `JWL_PROCESSOR_*`), set after the others
    /// (so they win).
    pub env: Vec<(String, String)>,
}

impl Default for SystemOptions {
    /// The documented defaults (`60s`, `5m`, `5` km, `1`, `30s`, `30s`, `200`), in the shared
    /// cluster.
    fn default() -> Self {
        Self {
            broker: BrokerKind::Nats,
            dispatch_deadline: Duration::from_secs(60),
            order_deadline: Duration::from_secs(300),
            dispatch_radius_km: 5.0,
            courier_capacity: 1,
            ack_wait: Duration::from_secs(30),
            db_stall_timeout: Duration::from_secs(30),
            private_cluster: false,
            proxied: Vec::new(),
            admission_min_open: 200,
            nats_nodes: 1,
            stream_replicas: 1,
            replicas: 1,
            outbox_partitions: 1,
            log_filter: "info".to_owned(),
            database_per_service: false,
            secure_bus: false,
            env: Vec::new(),
        }
    }
}

/// A running system. Dropping it kills the services (SIGKILL) and the broker; the
/// database is thrown away with the test cluster. The service logs stay in [`System::log_dir`];
/// if the test is panicking, their tails are printed.
pub struct System {
    // Field order matters: the services die before the broker and database they use.
    services: Vec<ServiceProcess>,
    proxies: Vec<(Service, Link, Proxy)>,
    options: SystemOptions,
    api: ApiClient,
    tokens: Tokens,
    admin_token: String,
    /// `JWL_JWT_SECRET` of the services.
    jwt_secret: String,
    pub(crate) broker: Broker,
    pub(crate) store: Store,
    /// `on_hand` of every SKU set through [`System::set_stock`], for the stock invariant.
    pub(crate) stocked: Mutex<BTreeMap<String, i64>>,
    log_dir: PathBuf,
    database: TestDatabase,
    server: Server,
    /// The system's own cluster with [`SystemOptions::private_cluster`]; dropped last.
    cluster: Option<TestCluster>,
}

/// The system's broker: one NATS server, or a cluster, or one secured server, or tansu.
enum Server {
    Single(TestNats),
    Cluster(TestNatsCluster),
    Secure(SecureNats),
    Tansu(TestTansu),
}

impl Server {
    async fn start(options: &SystemOptions) -> anyhow::Result<Self> {
        if options.broker == BrokerKind::Kafka {
            anyhow::ensure!(
                options.nats_nodes <= 1
                    && !options.secure_bus
                    && !options.proxied.iter().any(|(_, link)| *link == Link::Nats),
                "a cluster, a secured bus and a proxied NATS link need BrokerKind::Nats"
            );
            let tansu = jwl_testkit::tansu()
                .await?
                .context("tansu is not installed (scripts/install-deps builds it)")?;
            anyhow::ensure!(
                tansu.is_persistent(),
                "the installed tansu has no SQLite storage: a restart would lose the topics"
            );
            return Ok(Self::Tansu(tansu));
        }
        Ok(if options.secure_bus {
            anyhow::ensure!(
                options.nats_nodes == 1,
                "a secured bus is one server (SystemOptions::nats_nodes must be 1)"
            );
            Self::Secure(jwl_testkit::secure_nats().await?)
        } else if options.nats_nodes > 1 {
            Self::Cluster(jwl_testkit::nats_cluster(options.nats_nodes).await?)
        } else {
            Self::Single(jwl_testkit::nats().await?)
        })
    }

    /// What `JWL_NATS_URL` gets: the server's URL, or every node's, comma-separated; `None`
    /// on Kafka.
    fn nats_urls(&self) -> Option<String> {
        match self {
            Self::Single(nats) => Some(nats.url().to_owned()),
            Self::Cluster(cluster) => Some(cluster.urls()),
            Self::Secure(nats) => Some(nats.url().to_owned()),
            Self::Tansu(_) => None,
        }
    }

    /// The NATS server, or the first node of the cluster.
    fn first_nats(&self) -> anyhow::Result<&TestNats> {
        match self {
            Self::Single(nats) => Ok(nats),
            Self::Cluster(cluster) => Ok(&cluster.nodes()[0]),
            Self::Secure(nats) => Ok(nats.server()),
            Self::Tansu(_) => anyhow::bail!("the system runs on Kafka, not NATS"),
        }
    }

    /// How the services reach the broker: `JWL_NATS_URL`, or `JWL_BROKER=kafka` and
    /// `JWL_KAFKA_BROKERS`.
    fn env(&self) -> Vec<(String, String)> {
        match (self, self.nats_urls()) {
            (Self::Tansu(tansu), _) => vec![
                ("JWL_BROKER".to_owned(), "kafka".to_owned()),
                (
                    "JWL_KAFKA_BROKERS".to_owned(),
                    tansu.bootstrap_servers().to_owned(),
                ),
            ],
            (_, urls) => vec![("JWL_NATS_URL".to_owned(), urls.unwrap_or_default())],
        }
    }

    /// The `JWL_NATS_*` credentials and TLS variables of `service` on a secured bus.
    fn security_env(&self, service: Service) -> anyhow::Result<Vec<(String, String)>> {
        match self {
            Self::Secure(nats) => nats.env(service.as_str()),
            Self::Single(_) | Self::Cluster(_) | Self::Tansu(_) => Ok(Vec::new()),
        }
    }

    /// The test's view of the broker.
    async fn connect(&self) -> anyhow::Result<Broker> {
        match self {
            Self::Secure(secure) => {
                Broker::connect_nats(secure.url(), &secure.security("operator")?).await
            }
            Self::Single(_) | Self::Cluster(_) => {
                let urls = self.nats_urls().unwrap_or_default();
                Broker::connect_nats(&urls, &NatsSecurity::default()).await
            }
            Self::Tansu(tansu) => Broker::connect_kafka(tansu.bootstrap_servers()).await,
        }
    }
}

impl System {
    /// Starts NATS, a fresh database and the five services with `options`; returns once every
    /// service answers `200` on `/readyz`. Prints where the service logs are.
    pub async fn start(options: SystemOptions) -> anyhow::Result<System> {
        let binary = jwl_binary()?;
        let server = Server::start(&options).await?;
        let (cluster, database) = if options.private_cluster {
            let cluster = TestCluster::start().await?;
            let database = cluster.database().await?;
            (Some(cluster), database)
        } else {
            (None, jwl_testkit::database().await?)
        };
        let mut service_databases = BTreeMap::new();
        if options.database_per_service {
            for service in Service::ALL {
                if service != Service::Order {
                    let own = match &cluster {
                        Some(cluster) => cluster.database().await?,
                        None => jwl_testkit::database().await?,
                    };
                    service_databases.insert(service, own);
                }
            }
        }
        let log_dir = new_log_dir()?;
        eprintln!("jwl-e2e: service logs in {}", log_dir.display());

        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let env = service_env(&options, server.env(), database.url(), &secret, &log_dir);
        let mut proxies = Vec::with_capacity(options.proxied.len());
        // what one service's processes get in place of the common environment (a later entry
        // wins): a database of its own, a proxied link
        let mut own_env: Vec<(Service, (String, String))> = Vec::new();
        for (&service, own) in &service_databases {
            own_env.push((
                service,
                (database_url_variable(service), own.url().to_owned()),
            ));
        }
        for &(service, link) in &options.proxied {
            let (url, variable) = match link {
                Link::Nats => (server.first_nats()?.url(), "JWL_NATS_URL".to_owned()),
                Link::Postgres => (
                    service_databases.get(&service).unwrap_or(&database).url(),
                    database_url_variable(service),
                ),
            };
            let proxy = Proxy::start(&address_of(url)?).await?;
            let proxied_url = reroute(url, proxy.addr())?;
            own_env.push((service, (variable, proxied_url)));
            proxies.push((service, link, proxy));
        }
        let replicas = options.replicas.max(1);
        let mut security_env = BTreeMap::new();
        for service in Service::ALL {
            security_env.insert(service, server.security_env(service)?);
        }
        let security_env = &security_env;
        let started = futures::future::join_all(
            Service::ALL
                .iter()
                .flat_map(|&service| (1..=replicas).map(move |replica| (service, replica)))
                .map(|(service, replica)| {
                    let log_path = if replica == 1 {
                        log_dir.join(format!("{service}.log"))
                    } else {
                        log_dir.join(format!("{service}-{replica}.log"))
                    };
                    let mut env = env.clone();
                    for (variable, value) in security_env.get(&service).cloned().unwrap_or_default()
                    {
                        env.retain(|(k, _)| *k != variable);
                        env.push((variable, value));
                    }
                    for (_, (variable, url)) in own_env.iter().filter(|(s, _)| *s == service) {
                        env.retain(|(k, _)| k != variable);
                        env.push((variable.clone(), url.clone()));
                    }
                    ServiceProcess::start(service, &binary, env, log_path)
                }),
        )
        .await;
        let mut services = Vec::with_capacity(started.len());
        let mut failures = Vec::new();
        for outcome in started {
            match outcome {
                Ok(process) => services.push(process),
                Err(error) => failures.push(format!("{error:#}")),
            }
        }
        if !failures.is_empty() {
            anyhow::bail!(
                "the system did not start (logs in {}):\n{}",
                log_dir.display(),
                failures.join("\n\n")
            );
        }

        // the first replica of each service answers the test's calls
        let api = ApiClient::new(Service::ALL.map(|service| {
            let first = services.iter().find(|p| p.service() == service);
            (
                service,
                first.map(ServiceProcess::base_url).unwrap_or_default(),
            )
        }))?;
        let tokens = Tokens::new(&secret);
        let admin_token = tokens.admin()?;
        let broker = server.connect().await?;
        let mut pools = BTreeMap::new();
        for service in Service::ALL {
            let own = service_databases.get(&service).unwrap_or(&database);
            pools.insert(service, own.pool().await?);
        }
        let store = Store::per_service(pools)?;
        Ok(System {
            services,
            proxies,
            options,
            api,
            tokens,
            admin_token,
            jwt_secret: secret,
            broker,
            store,
            stocked: Mutex::new(BTreeMap::new()),
            log_dir,
            database,
            server,
            cluster,
        })
    }

    /// The settings the services run with.
    pub fn options(&self) -> &SystemOptions {
        &self.options
    }

    /// The HTTP client of the services.
    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// Mints tokens accepted by the services.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The services' `JWL_JWT_SECRET` (for tools that mint their own tokens, e.g. `jwl bench`).
    pub fn jwt_secret(&self) -> &str {
        &self.jwt_secret
    }

    /// The services' `JWL_NATS_URL`: the server, or every node of the cluster, comma-separated
    /// (an error on Kafka).
    pub fn nats_urls(&self) -> anyhow::Result<String> {
        self.server
            .nats_urls()
            .context("the system runs on Kafka, not NATS")
    }

    /// A token with the `admin` scope.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The (first) process of `service` (for [`ServiceProcess::kill`] /
    /// [`ServiceProcess::restart`]).
    pub fn service(&self, service: Service) -> &ServiceProcess {
        self.services
            .iter()
            .find(|p| p.service() == service)
            .unwrap_or_else(|| unreachable!("System::start starts every service"))
    }

    /// Every process of `service` ([`SystemOptions::replicas`]), the first one first.
    pub fn replicas(&self, service: Service) -> Vec<&ServiceProcess> {
        self.services
            .iter()
            .filter(|p| p.service() == service)
            .collect()
    }

    /// The proxy on `service`'s `link`, set up with [`SystemOptions::proxied`].
    pub fn proxy(&self, service: Service, link: Link) -> anyhow::Result<&Proxy> {
        self.proxies
            .iter()
            .find(|(s, l, _)| *s == service && *l == link)
            .map(|(_, _, proxy)| proxy)
            .with_context(|| format!("{service}'s {link} is not proxied (SystemOptions::proxied)"))
    }

    /// The private NATS server, or the cluster's first node (an error on Kafka).
    pub fn nats(&self) -> anyhow::Result<&TestNats> {
        self.server.first_nats()
    }

    /// The secured server, when the system runs on one ([`SystemOptions::secure_bus`]).
    pub fn secure_nats(&self) -> Option<&SecureNats> {
        match &self.server {
            Server::Secure(nats) => Some(nats),
            Server::Single(_) | Server::Cluster(_) | Server::Tansu(_) => None,
        }
    }

    /// The JetStream cluster, when the system runs on one ([`SystemOptions::nats_nodes`] > 1).
    pub fn nats_cluster(&self) -> Option<&TestNatsCluster> {
        match &self.server {
            Server::Cluster(cluster) => Some(cluster),
            Server::Single(_) | Server::Secure(_) | Server::Tansu(_) => None,
        }
    }

    /// Stops the broker (SIGTERM) and starts it again on the same port and storage (the NATS
    /// server, the cluster's first node, or tansu); returns once it answers.
    pub async fn restart_broker(&self) -> anyhow::Result<()> {
        match &self.server {
            Server::Tansu(tansu) => tansu.restart().await,
            _ => self.server.first_nats()?.restart().await,
        }
    }

    /// SIGKILLs the broker (the NATS server, the cluster's first node, or tansu); bring it
    /// back with [`System::start_broker_again`].
    pub async fn kill_broker(&self) -> anyhow::Result<()> {
        match &self.server {
            Server::Tansu(tansu) => tansu.kill().await,
            _ => self.server.first_nats()?.kill().await,
        }
    }

    /// Starts a killed broker again, on the same port and storage.
    pub async fn start_broker_again(&self) -> anyhow::Result<()> {
        match &self.server {
            Server::Tansu(tansu) => tansu.start_again().await,
            _ => self.server.first_nats()?.start_again().await,
        }
    }

    /// The system's broker, as the tests see it (stream contents, raw publishing).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The system's database (the order service's, with
    /// [`SystemOptions::database_per_service`]).
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// The system's own PostgreSQL cluster (to stop and start it again), if it was started
    /// with [`SystemOptions::private_cluster`].
    pub fn cluster(&self) -> Option<&TestCluster> {
        self.cluster.as_ref()
    }

    /// The directory holding one `<service>.log` per service.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The last `lines` lines of every service's log, with headers.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut text = format!("service logs in {}\n", self.log_dir().display());
        for process in &self.services {
            text.push_str(&format!(
                "----- {} ({}) -----\n{}\n",
                process.service(),
                process.log_path().display(),
                process.log_tail(lines)
            ));
        }
        text
    }

    /// Prints the tail of every service's log to stderr.
    pub fn dump_logs_tail(&self) {
        eprintln!("{}", self.logs_tail(TAIL_LINES));
    }

    /// Sets `sku`'s on-hand stock (`PUT /v1/stock/{sku}`) and records it as the SKU's initial
    /// stock for [`System::check_invariants`] (so set it before placing orders for it).
    pub async fn set_stock(&self, sku: &str, on_hand: i64) -> anyhow::Result<()> {
        let level = self.api.put_stock(&self.admin_token, sku, on_hand).await?;
        anyhow::ensure!(
            level.sku == sku && level.on_hand == on_hand,
            "PUT /v1/stock/{sku} {on_hand} answered {level:?}"
        );
        self.stocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sku.to_owned(), on_hand);
        Ok(())
    }

    /// Reports courier `courier_id` at `at`, with its own token.
    pub async fn move_courier(&self, courier_id: &str, at: Point) -> anyhow::Result<()> {
        let token = self.tokens.courier(courier_id)?;
        self.api.put_courier_location(&token, courier_id, at).await
    }

    /// Couriers `courier-0` … `courier-<count - 1>` in a line east of [`Point::JIANGWAN`] (the
    /// tests' pickup point), `spacing_km` apart, the first on the point itself.
    pub async fn line_up_couriers(&self, count: usize, spacing_km: f64) -> anyhow::Result<()> {
        for n in 0..count {
            let at = Point::JIANGWAN.offset_km(n as f64 * spacing_km, 0.0);
            self.move_courier(&format!("courier-{n}"), at).await?;
        }
        Ok(())
    }

    /// Places `order` as customer `customer_id` (with that customer's token).
    pub async fn place_order(
        &self,
        customer_id: &str,
        order: NewOrder,
    ) -> anyhow::Result<PlacedOrder> {
        let token = self.tokens.customer(customer_id)?;
        let order_id = self.api.place_order(&token, &order).await?;
        Ok(PlacedOrder {
            order_id,
            customer_id: customer_id.to_owned(),
            order,
        })
    }

    /// Places many orders concurrently (each by its own customer `customer-<n>`), in order.
    pub async fn place_orders(&self, orders: Vec<NewOrder>) -> anyhow::Result<Vec<PlacedOrder>> {
        futures::stream::iter(orders.into_iter().enumerate())
            .map(
                |(n, order)| async move { self.place_order(&format!("customer-{n}"), order).await },
            )
            .buffered(PLACE_CONCURRENCY)
            .try_collect()
            .await
    }

    /// `GET /v1/orders/{id}` as admin.
    pub async fn order(&self, order_id: &str) -> anyhow::Result<OrderView> {
        self.api.order(&self.admin_token, order_id).await
    }

    /// Waits until order `order_id` satisfies `done` (described by `what`), and returns it.
    pub async fn wait_for_order(
        &self,
        order_id: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&OrderView) -> bool,
    ) -> anyhow::Result<OrderView> {
        let description = format!("order {order_id} to be {what}");
        eventually(&description, timeout, || async {
            let view = self.order(order_id).await.map_err(|e| format!("{e:#}"))?;
            if done(&view) {
                Ok(view)
            } else {
                Err(format!(
                    "it is {:?} (reason {:?})",
                    view.status, view.reason
                ))
            }
        })
        .await
        .with_context(|| format!("logs in {}", self.log_dir().display()))
    }

    /// Waits until order `order_id` is terminal and returns it.
    pub async fn wait_terminal(
        &self,
        order_id: &str,
        timeout: Duration,
    ) -> anyhow::Result<OrderView> {
        self.wait_for_order(order_id, "terminal", timeout, |v| v.status.is_terminal())
            .await
    }

    /// Waits until every one of `orders` is terminal (all within `timeout`), and returns them.
    pub async fn wait_all_terminal(
        &self,
        orders: &[PlacedOrder],
        timeout: Duration,
    ) -> anyhow::Result<Vec<OrderView>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut views = Vec::with_capacity(orders.len());
        for placed in orders {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            views.push(
                self.wait_terminal(&placed.order_id, left.max(Duration::from_millis(1)))
                    .await?,
            );
        }
        Ok(views)
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("jwl-e2e: the test panicked; the tails of the service logs follow.");
            self.dump_logs_tail();
        }
    }
}

/// Starts a system with `options`, runs `body` against it and, if `body` fails, prints the
/// tails of the service logs before returning the error. On a broker that cannot be started
/// here (Kafka without tansu installed, [`BrokerKind::available`]) it says so on stderr and
/// returns `Ok` without running `body`: the test is skipped.
pub async fn with_system<F>(options: SystemOptions, body: F) -> anyhow::Result<()>
where
    F: AsyncFnOnce(&System) -> anyhow::Result<()>,
{
    if !options.broker.available() {
        return Ok(());
    }
    let system = System::start(options).await?;
    let outcome = body(&system).await;
    if outcome.is_err() {
        system.dump_logs_tail();
    }
    outcome
}

/// A new `$TMPDIR/jwl-e2e/system-<pid>-<random>` directory for one system's logs. Logs are
/// kept after the test (so a failure can be read at leisure); the directories of test processes
/// that no longer run are removed by the first system of the next test process.
fn new_log_dir() -> anyhow::Result<PathBuf> {
    let root = std::env::temp_dir().join("jwl-e2e");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| sweep_stale_log_dirs(&root));
    let dir = tempfile::Builder::new()
        .prefix(&format!("system-{}-", std::process::id()))
        .tempdir_in(&root)
        .with_context(|| format!("creating a log directory in {}", root.display()))?;
    Ok(dir.keep())
}

/// Removes `system-<pid>-*` directories whose process is gone.
fn sweep_stale_log_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The environment of every service process.
fn service_env(
    options: &SystemOptions,
    broker_env: Vec<(String, String)>,
    database_url: &str,
    jwt_secret: &str,
    data_dir: &Path,
) -> Vec<(String, String)> {
    let data_dir: PathBuf = data_dir.join("data");
    [
        ("JWL_STREAM_REPLICAS", options.stream_replicas.to_string()),
        (
            "JWL_OUTBOX_PARTITIONS",
            options.outbox_partitions.to_string(),
        ),
        ("JWL_DATABASE_URL", database_url.to_owned()),
        ("JWL_JWT_SECRET", jwt_secret.to_owned()),
        ("JWL_DATA_DIR", data_dir.display().to_string()),
        (
            "JWL_DISPATCH_DEADLINE",
            humantime(options.dispatch_deadline),
        ),
        ("JWL_ORDER_DEADLINE", humantime(options.order_deadline)),
        (
            "JWL_DISPATCH_RADIUS_KM",
            options.dispatch_radius_km.to_string(),
        ),
        ("JWL_COURIER_CAPACITY", options.courier_capacity.to_string()),
        ("JWL_ACK_WAIT", humantime(options.ack_wait)),
        ("JWL_DB_STALL_TIMEOUT", humantime(options.db_stall_timeout)),
        (
            "JWL_ADMISSION_MIN_OPEN",
            options.admission_min_open.to_string(),
        ),
        ("RUST_LOG", options.log_filter.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(broker_env)
    .filter(|(k, _)| !options.env.iter().any(|(own, _)| own == k))
    .chain(options.env.iter().cloned())
    .collect()
}

/// The variable that gives `service` a database of its own: `JWL_PAYMENT_DATABASE_URL`.
fn database_url_variable(service: Service) -> String {
    format!("JWL_{}_DATABASE_URL", service.as_str().to_ascii_uppercase())
}

/// A duration as `jwl` parses it (`2500ms`).
fn humantime(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}
