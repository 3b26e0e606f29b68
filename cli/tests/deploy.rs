//! The deployment files against the code (no container engine needed): `deploy/compose.yaml` and
//! `deploy/k8s/jiangwanli.yaml` are parsed, and every `JWL_*` variable they set must be one that
//! the `jwl` command they run reads (as `jwl <command> --help` lists it), every command must be a
//! `jwl` subcommand `jwl` accepts, and the ports must agree: the HTTP port of `JWL_HTTP_ADDR`
//! with the code's default, the container ports, the scrape targets and the Services; the NATS
//! URLs and routes with the NATS nodes the files run. Both files must run a 3-node NATS cluster
//! with `JWL_STREAM_REPLICAS=3`, two replicas of every service and `JWL_OUTBOX_PARTITIONS`.
//! `deploy/nats/README.md` must name every stream the services create.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlLoader};

const SERVICES: [&str; 5] = ["order", "payment", "inventory", "fulfillment", "dispatch"];
const NATS_NODES: usize = 3;
const REPLICAS: usize = 2;

fn repo_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&full)
        .unwrap_or_else(|error| panic!("reading {}: {error}", full.display()))
}

fn yaml_documents(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&repo_file(path))
        .unwrap_or_else(|error| panic!("{path} is not valid YAML: {error}"))
}

/// `node` with YAML merge keys (`<<: *anchor`) applied, recursively (keys of the mapping itself
/// win over merged ones, as compose does).
fn merged(node: &Yaml) -> Yaml {
    match node {
        Yaml::Hash(hash) => {
            let mut out = Hash::new();
            for (key, value) in hash {
                if key.as_str() != Some("<<") {
                    out.insert(key.clone(), merged(value));
                }
            }
            if let Some(Yaml::Hash(base)) = hash.get(&Yaml::String("<<".to_owned())) {
                for (key, value) in base {
                    if !out.contains_key(key) {
                        out.insert(key.clone(), merged(value));
                    }
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(items) => Yaml::Array(items.iter().map(merged).collect()),
        other => other.clone(),
    }
}

fn strings(node: &Yaml) -> Vec<String> {
    node.as_vec()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A scalar as text (compose allows numbers and strings for environment values).
fn scalar(node: &Yaml) -> Option<String> {
    match node {
        Yaml::String(text) | Yaml::Real(text) => Some(text.clone()),
        Yaml::Integer(n) => Some(n.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Runs `jwl` with `args`.
fn jwl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jwl"))
        .args(args)
        .env_clear()
        .output()
        .unwrap_or_else(|error| panic!("running jwl {args:?}: {error}"))
}

/// Whether `jwl <command> --help` is accepted (clap checks the subcommand and its positional
/// values before answering `--help`).
fn is_jwl_command(command: &[String]) -> bool {
    let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
    args.push("--help");
    jwl(&args).status.success()
}

/// The `JWL_*` variables `jwl <command> --help` lists (`[env: NAME=…]`), and the help text.
fn jwl_env(command: &[String]) -> (BTreeSet<String>, String) {
    let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
    args.push("--help");
    let output = jwl(&args);
    assert!(output.status.success(), "jwl {args:?} failed");
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    let names = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .collect();
    (names, help)
}

/// The port of the default `JWL_HTTP_ADDR` in `jwl serve --help` (`[default: 127.0.0.1:8080]`).
fn default_http_port(serve_help: &str) -> u16 {
    serve_help
        .lines()
        .skip_while(|line| !line.contains("--http-addr"))
        .find_map(|line| line.split("[default: ").nth(1))
        .and_then(|rest| rest.split(']').next())
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no default of --http-addr in jwl serve --help:\n{serve_help}"))
}

fn port_of_addr(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// (host, port) of every URL of a comma-separated list (`nats://h:p,nats://h2:p2`).
fn hosts_and_ports(urls: &str) -> Vec<(String, u16)> {
    urls.split(',')
        .map(|url| {
            let rest = url.trim().split("://").nth(1).unwrap_or(url);
            let authority = rest.split('/').next().unwrap_or(rest);
            let host_port = authority.rsplit('@').next().unwrap_or(authority);
            let (host, port) = host_port
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("no port in {url}"));
            (
                host.to_owned(),
                port.parse().unwrap_or_else(|_| panic!("bad port in {url}")),
            )
        })
        .collect()
}

/// What a service container runs with: the `jwl` command and its `JWL_*` settings.
#[derive(Debug)]
struct Runs {
    /// Where it was found (for messages).
    at: String,
    command: Vec<String>,
    env: BTreeMap<String, Option<String>>,
}

/// Checks one service container: its command is a `jwl serve <service>` `jwl` accepts, every
/// `JWL_*` it sets is read by that command, and its HTTP port is the code's default. Returns the
/// service it runs, its HTTP port and the port serving its `/metrics` (that of
/// `JWL_METRICS_ADDR` when set, else the HTTP port).
fn check_service(runs: &Runs) -> (String, u16, u16) {
    let at = &runs.at;
    assert!(
        is_jwl_command(&runs.command),
        "{at}: `jwl {}` is not a jwl command",
        runs.command.join(" ")
    );
    assert_eq!(
        runs.command.first().map(String::as_str),
        Some("serve"),
        "{at}"
    );
    let service = runs.command.get(1).cloned().unwrap_or_default();
    let (read, help) = jwl_env(&runs.command[..1]);
    for name in runs.env.keys().filter(|name| name.starts_with("JWL_")) {
        assert!(
            read.contains(name),
            "{at} sets {name}, which `jwl {}` does not read",
            runs.command[0]
        );
    }
    let default_port = default_http_port(&help);
    let port = match runs.env.get("JWL_HTTP_ADDR") {
        Some(Some(addr)) => port_of_addr(addr),
        _ => default_port,
    };
    assert_eq!(
        port, default_port,
        "{at}: JWL_HTTP_ADDR's port differs from the code's default"
    );
    for required in [
        "JWL_NATS_URL",
        "JWL_STREAM_REPLICAS",
        "JWL_OUTBOX_PARTITIONS",
        "JWL_JWT_SECRET",
    ] {
        assert!(
            runs.env.contains_key(required),
            "{at} does not set {required}"
        );
    }
    assert_eq!(
        runs.env.get("JWL_STREAM_REPLICAS").cloned().flatten(),
        Some(NATS_NODES.to_string()),
        "{at}: streams replicated on every node of the cluster"
    );
    let partitions: usize = runs
        .env
        .get("JWL_OUTBOX_PARTITIONS")
        .cloned()
        .flatten()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        partitions >= REPLICAS,
        "{at}: JWL_OUTBOX_PARTITIONS ({partitions}) gives every replica a partition"
    );
    let metrics_port = match runs.env.get("JWL_METRICS_ADDR") {
        Some(Some(addr)) => port_of_addr(addr),
        _ => port,
    };
    (service, port, metrics_port)
}

#[test]
fn the_checks_catch_a_wrong_command_and_an_unknown_setting() {
    assert!(is_jwl_command(&["serve".to_owned(), "order".to_owned()]));
    assert!(!is_jwl_command(&["serve".to_owned(), "orders".to_owned()]));
    assert!(!is_jwl_command(&["server".to_owned(), "order".to_owned()]));
    let (read, _) = jwl_env(&["serve".to_owned()]);
    for name in [
        "JWL_HTTP_ADDR",
        "JWL_NATS_URL",
        "JWL_STREAM_REPLICAS",
        "JWL_OUTBOX_PARTITIONS",
        "JWL_ORDER_DATABASE_URL",
        "JWL_JWT_SECRET",
    ] {
        assert!(read.contains(name), "jwl serve reads {name}: {read:?}");
    }
    assert!(!read.contains("JWL_OUTBOX_PARTITION"));
}

#[test]
fn compose_runs_what_the_code_reads() {
    let documents = yaml_documents("deploy/compose.yaml");
    let compose = merged(&documents[0]);
    let services = compose["services"]
        .as_hash()
        .expect("compose.yaml has services");
    let name_of = |key: &Yaml| key.as_str().unwrap_or_default().to_owned();

    // the NATS nodes: client port, cluster port, routes between them
    let nats: BTreeMap<String, Vec<String>> = services
        .iter()
        .filter(|(_, spec)| {
            spec["image"]
                .as_str()
                .is_some_and(|image| image.starts_with("nats:"))
        })
        .map(|(key, spec)| (name_of(key), strings(&spec["command"])))
        .collect();
    assert_eq!(nats.len(), NATS_NODES, "a 3-node NATS cluster: {nats:?}");
    let flag = |command: &[String], name: &str| -> Option<String> {
        command
            .iter()
            .position(|arg| arg == name)
            .and_then(|i| command.get(i + 1).cloned())
    };
    let mut client_ports = BTreeSet::new();
    for (node, command) in &nats {
        assert!(
            command.iter().any(|arg| arg == "-js"),
            "{node} runs JetStream"
        );
        client_ports.insert(
            flag(command, "-p")
                .and_then(|port| port.parse::<u16>().ok())
                .unwrap_or(4222),
        );
        let cluster_port = port_of_addr(
            &flag(command, "--cluster").unwrap_or_else(|| panic!("{node} has no --cluster")),
        );
        let routes = flag(command, "--routes").unwrap_or_else(|| panic!("{node} has no --routes"));
        let routed: BTreeSet<String> = hosts_and_ports(&routes)
            .into_iter()
            .map(|(host, port)| {
                assert_eq!(
                    port, cluster_port,
                    "{node}: a route to {host} on another port"
                );
                host
            })
            .collect();
        let nodes: BTreeSet<String> = nats.keys().cloned().collect();
        assert_eq!(routed, nodes, "{node} routes to every node");
    }

    let mut replicas: BTreeMap<String, usize> = BTreeMap::new();
    let mut targets_wanted = BTreeSet::new();
    for (key, spec) in services {
        let command = strings(&spec["command"]);
        if command.first().map(String::as_str) != Some("serve") {
            continue;
        }
        let name = name_of(key);
        let env: BTreeMap<String, Option<String>> = spec["environment"]
            .as_hash()
            .map(|hash| hash.iter().map(|(k, v)| (name_of(k), scalar(v))).collect())
            .unwrap_or_default();
        let runs = Runs {
            at: format!("compose service {name}"),
            command,
            env,
        };
        let (service, port, metrics_port) = check_service(&runs);
        *replicas.entry(service).or_default() += 1;
        for mapping in strings(&spec["ports"]) {
            let container = mapping.rsplit(':').next().unwrap_or_default();
            assert_eq!(container, port.to_string(), "{name} publishes {mapping}");
        }
        targets_wanted.insert(format!("{name}:{metrics_port}"));
        let urls = runs.env["JWL_NATS_URL"].clone().unwrap_or_default();
        let nodes: BTreeSet<String> = hosts_and_ports(&urls)
            .into_iter()
            .map(|(host, port)| {
                assert!(client_ports.contains(&port), "{name}: NATS port {port}");
                host
            })
            .collect();
        assert_eq!(
            nodes,
            nats.keys().cloned().collect::<BTreeSet<_>>(),
            "{name} lists every NATS node"
        );
        let database = runs.env["JWL_DATABASE_URL"].clone().unwrap_or_default();
        for (host, port) in hosts_and_ports(&database) {
            assert!(services.contains_key(&Yaml::String(host.clone())), "{host}");
            assert_eq!(port, 5432, "PostgreSQL's port");
        }
    }
    let expected: BTreeMap<String, usize> = SERVICES
        .iter()
        .map(|service| ((*service).to_owned(), REPLICAS))
        .collect();
    assert_eq!(replicas, expected, "two replicas of every service");

    // Prometheus scrapes every replica on its metrics port
    let prometheus = &yaml_documents("deploy/prometheus/prometheus.yml")[0];
    let scraped: BTreeSet<String> = prometheus["scrape_configs"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter(|job| job["job_name"].as_str() == Some("jwl"))
        .flat_map(|job| job["static_configs"].as_vec().cloned().unwrap_or_default())
        .flat_map(|config| strings(&config["targets"]))
        .collect();
    assert_eq!(
        scraped, targets_wanted,
        "prometheus.yml scrapes every replica"
    );
}

#[test]
fn kubernetes_runs_what_the_code_reads() {
    let documents = yaml_documents("deploy/k8s/jiangwanli.yaml");
    let of_kind = |kind: &str| -> Vec<&Yaml> {
        documents
            .iter()
            .filter(|doc| doc["kind"].as_str() == Some(kind))
            .collect()
    };
    let named_port = |ports: &Yaml, name: &str| -> Option<u16> {
        ports.as_vec().and_then(|ports| {
            ports
                .iter()
                .find(|port| port["name"].as_str() == Some(name))
                .and_then(|port| port["containerPort"].as_i64())
                .and_then(|port| u16::try_from(port).ok())
        })
    };

    // the NATS StatefulSet, its headless Service and its configuration
    let nats = of_kind("StatefulSet");
    assert_eq!(nats.len(), 1, "one NATS StatefulSet");
    let nats = nats[0];
    let nats_name = nats["metadata"]["name"].as_str().unwrap_or_default();
    assert_eq!(nats["spec"]["replicas"].as_i64(), Some(NATS_NODES as i64));
    assert_eq!(nats["spec"]["serviceName"].as_str(), Some(nats_name));
    let container = &nats["spec"]["template"]["spec"]["containers"][0];
    let client_port = named_port(&container["ports"], "client").expect("NATS client port");
    let cluster_port = named_port(&container["ports"], "cluster").expect("NATS cluster port");
    let config = of_kind("ConfigMap")
        .into_iter()
        .find(|map| map["metadata"]["name"].as_str() == Some(nats_name))
        .and_then(|map| map["data"]["nats.conf"].as_str())
        .expect("the NATS configuration")
        .to_owned();
    assert!(
        config.contains(&format!("listen: 0.0.0.0:{client_port}")),
        "{config}"
    );
    assert!(
        config.contains(&format!("listen: 0.0.0.0:{cluster_port}")),
        "{config}"
    );
    let pods: Vec<String> = (0..NATS_NODES)
        .map(|i| format!("{nats_name}-{i}.{nats_name}"))
        .collect();
    for pod in &pods {
        assert!(
            config.contains(&format!("nats-route://{pod}:{cluster_port}")),
            "a route to {pod}: {config}"
        );
    }
    let headless = of_kind("Service")
        .into_iter()
        .find(|service| service["metadata"]["name"].as_str() == Some(nats_name))
        .expect("the NATS Service");
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));

    let services: Vec<&Yaml> = of_kind("Service");
    let mut replicas: BTreeMap<String, usize> = BTreeMap::new();
    for deployment in of_kind("Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap_or_default();
        let pod = &deployment["spec"]["template"];
        let container = &pod["spec"]["containers"][0];
        let env: BTreeMap<String, Option<String>> = container["env"]
            .as_vec()
            .into_iter()
            .flatten()
            .map(|var| {
                (
                    var["name"].as_str().unwrap_or_default().to_owned(),
                    scalar(&var["value"]),
                )
            })
            .collect();
        let runs = Runs {
            at: format!("Deployment {name}"),
            command: strings(&container["args"]),
            env,
        };
        let (service, port, metrics_port) = check_service(&runs);
        let count = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
        *replicas.entry(service).or_default() += usize::try_from(count).unwrap_or(0);
        assert_eq!(
            named_port(&container["ports"], "http"),
            Some(port),
            "{name}"
        );
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(metrics_port.to_string().as_str()),
            "{name} is scraped on its metrics port"
        );
        if metrics_port != port {
            assert_eq!(
                named_port(&container["ports"], "metrics"),
                Some(metrics_port),
                "{name}"
            );
        }
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(container[probe]["httpGet"]["port"].as_str(), Some("http"));
        }
        let labels = &pod["metadata"]["labels"];
        let selected = services.iter().any(|service| {
            service["spec"]["selector"]
                .as_hash()
                .is_some_and(|selector| {
                    selector.iter().all(|(key, value)| {
                        key.as_str()
                            .is_some_and(|key| labels[key].as_str() == value.as_str())
                    })
                })
                && service["spec"]["ports"][0]["targetPort"].as_str() == Some("http")
        });
        assert!(selected, "a Service sends to {name}'s http port");
        let urls = runs.env["JWL_NATS_URL"]
            .clone()
            .expect("JWL_NATS_URL given as a value");
        let nodes: Vec<String> = hosts_and_ports(&urls)
            .into_iter()
            .map(|(host, port)| {
                assert_eq!(port, client_port, "{name}: NATS client port");
                host
            })
            .collect();
        assert_eq!(nodes, pods, "{name} lists every NATS node");
    }
    let expected: BTreeMap<String, usize> = SERVICES
        .iter()
        .map(|service| ((*service).to_owned(), REPLICAS))
        .collect();
    assert_eq!(replicas, expected, "two replicas of every service");
}

#[test]
fn the_nats_readme_names_every_stream_the_services_create() {
    let readme = repo_file("deploy/nats/README.md");
    let settings = jwl_outbox::MessagingSettings::default();
    for stream in [
        &settings.events_stream,
        &settings.dlq_stream,
        &settings.replay_stream,
        &settings.dlq_log_stream,
    ] {
        assert!(
            readme.contains(&format!("| `{stream}` |")),
            "deploy/nats/README.md has no row for {stream}"
        );
    }
}
