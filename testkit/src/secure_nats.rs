//! A private nats-server secured as `deploy/nats/` describes: TLS required, client certificates
//! verified (the server's and the clients' issued for the test by a CA made with rcgen), and
//! the users and permissions of `deploy/nats/jwl-auth.conf` (one per service, the operator, the
//! bench), each with a random password. For tests of the secured bus.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use jwl_outbox::transport::nats::{NatsCredentials, NatsSecurity, NatsTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use secrecy::SecretString;

use crate::nats::{TestNats, start_in};
use crate::scratch;

/// The users and permissions the deployment ships, included by the test server's configuration.
pub const AUTH_CONF: &str = include_str!("../../deploy/nats/jwl-auth.conf");

/// The users of [`AUTH_CONF`], without their `jwl-` prefix: the five services, `operator`
/// (`jwl saga`, `replay`, `dlq`) and `bench`.
pub const USERS: [&str; 7] = [
    "order",
    "payment",
    "inventory",
    "fulfillment",
    "dispatch",
    "operator",
    "bench",
];

/// A running secured server. Dropping it kills the server and removes its files.
#[derive(Debug)]
pub struct SecureNats {
    nats: TestNats,
    pki: Pki,
    passwords: BTreeMap<&'static str, String>,
}

/// The test's certificates, as PEM files.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA that issued the server's and the client's certificates.
    pub ca_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
}

/// Starts a private nats-server requiring TLS, client certificates and the deployment's users.
pub async fn secure_nats() -> anyhow::Result<SecureNats> {
    tokio::task::spawn_blocking(start_blocking)
        .await
        .context("secure nats-server start task failed")?
}

fn start_blocking() -> anyhow::Result<SecureNats> {
    let dir = scratch::new_dir("secure-nats")?;
    let pki = issue_certificates(dir.path())?;
    let passwords: BTreeMap<&'static str, String> = USERS
        .iter()
        .map(|&user| (user, uuid::Uuid::new_v4().simple().to_string()))
        .collect();
    std::fs::write(dir.path().join("jwl-auth.conf"), AUTH_CONF).context("writing jwl-auth.conf")?;
    let config_file = dir.path().join("nats-server.conf");
    std::fs::write(&config_file, server_config(&pki)).context("writing nats-server.conf")?;
    let env = passwords
        .iter()
        .map(|(user, password)| (password_variable(user), password.clone()))
        .collect();
    let nats = start_in(dir, Some(config_file), env)?;
    Ok(SecureNats {
        nats,
        pki,
        passwords,
    })
}

/// `JWL_NATS_ORDER_PASSWORD`, …: the variable `jwl-auth.conf` reads `user`'s password from.
pub fn password_variable(user: &str) -> String {
    format!("JWL_NATS_{}_PASSWORD", user.to_ascii_uppercase())
}

fn server_config(pki: &Pki) -> String {
    format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  \
         timeout: 2\n}}\ninclude \"jwl-auth.conf\"\n",
        pki.server_cert_file.display(),
        pki.server_key_file.display(),
        pki.ca_file.display()
    )
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, in `dir`.
fn issue_certificates(dir: &Path) -> anyhow::Result<Pki> {
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "jwl test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |names: Vec<String>, purpose: ExtendedKeyUsagePurpose, name: &str| {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &issuer)?;
        anyhow::Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "jwl test nats-server",
    )?;
    let (client_cert, client_key) = leaf(
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        "jwl test client",
    )?;
    let pki = Pki {
        ca_file: dir.join("ca.pem"),
        client_cert_file: dir.join("client.pem"),
        client_key_file: dir.join("client-key.pem"),
        server_cert_file: dir.join("server.pem"),
        server_key_file: dir.join("server-key.pem"),
    };
    for (path, contents) in [
        (&pki.ca_file, ca_cert.pem()),
        (&pki.client_cert_file, client_cert),
        (&pki.client_key_file, client_key),
        (&pki.server_cert_file, server_cert),
        (&pki.server_key_file, server_key),
    ] {
        std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(pki)
}

impl SecureNats {
    /// `nats://127.0.0.1:PORT` (the server asks for TLS; the client upgrades).
    pub fn url(&self) -> &str {
        self.nats.url()
    }

    /// The server, for fault injection and its log.
    pub fn server(&self) -> &TestNats {
        &self.nats
    }

    /// The certificates.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// `user`'s password (`user` without the `jwl-` prefix, one of [`USERS`]).
    pub fn password(&self, user: &str) -> anyhow::Result<&str> {
        self.passwords
            .get(user)
            .map(String::as_str)
            .with_context(|| format!("no NATS user jwl-{user}"))
    }

    /// The TLS settings a client needs: the test CA and the client certificate.
    pub fn tls(&self) -> NatsTls {
        NatsTls {
            ca_file: Some(self.pki.ca_file.clone()),
            cert_file: Some(self.pki.client_cert_file.clone()),
            key_file: Some(self.pki.client_key_file.clone()),
            required: true,
        }
    }

    /// Connecting as `jwl-<user>` with its password, over TLS with the client certificate.
    pub fn security(&self, user: &str) -> anyhow::Result<NatsSecurity> {
        Ok(NatsSecurity {
            credentials: NatsCredentials::UserPassword {
                user: format!("jwl-{user}"),
                password: SecretString::from(self.password(user)?.to_owned()),
            },
            tls: self.tls(),
        })
    }

    /// The `JWL_NATS_*` variables of a `jwl` process connecting as `jwl-<user>`, URL included.
    pub fn env(&self, user: &str) -> anyhow::Result<Vec<(String, String)>> {
        let path = |path: &Path| path.display().to_string();
        Ok(vec![
            ("JWL_NATS_URL".to_owned(), self.url().to_owned()),
            ("JWL_NATS_USER".to_owned(), format!("jwl-{user}")),
            (
                "JWL_NATS_PASSWORD".to_owned(),
                self.password(user)?.to_owned(),
            ),
            ("JWL_NATS_TLS_CA_FILE".to_owned(), path(&self.pki.ca_file)),
            (
                "JWL_NATS_TLS_CERT_FILE".to_owned(),
                path(&self.pki.client_cert_file),
            ),
            (
                "JWL_NATS_TLS_KEY_FILE".to_owned(),
                path(&self.pki.client_key_file),
            ),
        ])
    }
}
