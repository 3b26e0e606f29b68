//! How a connection authenticates to NATS and is encrypted ([`NatsSecurity`]): user and password
//! (also taken from a URL's userinfo), a token, an nkey seed file or a `.creds` file, and TLS (a
//! CA file, a client certificate and key, TLS required). Secrets are held as [`SecretString`]:
//! `Debug`, `Display` and the errors of this module never show them. Everything is read and
//! checked before the first connection attempt, so a missing file or an unusable key is a clear
//! start-up error rather than a connection that retries forever.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_nats::ConnectOptions;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};

use super::urls::server_list;

/// The credentials a connection presents. At most one kind is used.
#[derive(Clone, Debug, Default)]
pub enum NatsCredentials {
    /// None configured: a URL's userinfo is used if it has one (`nats://user:password@host`,
    /// `nats://token@host`), else the connection is anonymous.
    #[default]
    None,
    /// A user of the server's `authorization` block.
    UserPassword {
        user: String,
        password: SecretString,
    },
    /// The server's `authorization { token: … }`.
    Token(SecretString),
    /// A file holding the user's nkey seed (`SU…`); the server knows the user by its public key.
    NkeySeedFile(PathBuf),
    /// A `.creds` file (user JWT and nkey seed) of an account in operator (JWT) mode.
    CredsFile(PathBuf),
}

/// The raw credential settings, as an operator gives them (`JWL_NATS_USER`, …), before they are
/// checked to name at most one kind of credential.
#[derive(Clone, Debug, Default)]
pub struct CredentialSettings {
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub token: Option<SecretString>,
    pub nkey_seed_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
}

impl NatsCredentials {
    /// The one kind of credential `settings` names, [`NatsCredentials::None`] when it names none.
    /// A user needs a password and a password a user; two kinds at once are refused.
    pub fn from_settings(settings: CredentialSettings) -> Result<Self, SecurityError> {
        let CredentialSettings {
            user,
            password,
            token,
            nkey_seed_file,
            creds_file,
        } = settings;
        let mut chosen = Vec::new();
        let user_password = match (user, password) {
            (Some(user), Some(password)) => {
                chosen.push("JWL_NATS_USER/JWL_NATS_PASSWORD");
                Some(Self::UserPassword { user, password })
            }
            (Some(_), None) => {
                return Err(SecurityError::Settings(
                    "JWL_NATS_USER is set without JWL_NATS_PASSWORD".to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(SecurityError::Settings(
                    "JWL_NATS_PASSWORD is set without JWL_NATS_USER".to_owned(),
                ));
            }
            (None, None) => None,
        };
        let token = token.map(|token| {
            chosen.push("JWL_NATS_TOKEN");
            Self::Token(token)
        });
        let nkey = nkey_seed_file.map(|path| {
            chosen.push("JWL_NATS_NKEY_SEED_FILE");
            Self::NkeySeedFile(path)
        });
        let creds = creds_file.map(|path| {
            chosen.push("JWL_NATS_CREDS_FILE");
            Self::CredsFile(path)
        });
        if chosen.len() > 1 {
            return Err(SecurityError::Settings(format!(
                "only one kind of NATS credential can be used; set one of {}",
                chosen.join(", ")
            )));
        }
        Ok(user_password
            .or(token)
            .or(nkey)
            .or(creds)
            .unwrap_or_default())
    }
}

/// TLS to the server. Giving a CA file or a client certificate makes TLS required.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// PEM file of the CA(s) the server's certificate must chain to, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain), for servers that verify clients.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// Refuse to talk to the server without TLS (also implied by a `tls://` URL).
    pub required: bool,
}

impl NatsTls {
    /// Whether the connection must be encrypted.
    pub fn is_required(&self) -> bool {
        self.required || self.ca_file.is_some() || self.cert_file.is_some()
    }
}

/// Credentials and TLS of a NATS connection. The default is what Jiangwanli always did: no
/// credentials (unless the URL carries them) and TLS only when the server asks for it.
#[derive(Clone, Debug, Default)]
pub struct NatsSecurity {
    pub credentials: NatsCredentials,
    pub tls: NatsTls,
}

/// Invalid security settings, or a file they name that cannot be used. Never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("NATS security settings: {0}")]
    Settings(String),
    #[error("reading the NATS {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the NATS {what} {} cannot be used: {why}", path.display())]
    Invalid {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("NATS URL {url} is not valid: {why}")]
    Url { url: String, why: String },
    #[error("NATS TLS settings cannot be used: {0}")]
    Tls(String),
}

/// What a connection presents, resolved: secrets read from their files.
pub(super) enum Auth {
    Anonymous,
    UserPassword {
        user: String,
        password: SecretString,
    },
    Token(SecretString),
    Nkey {
        seed: SecretString,
        path: PathBuf,
    },
    Creds {
        contents: SecretString,
        path: PathBuf,
    },
}

impl fmt::Display for Auth {
    /// How the connection authenticates, for error messages (never the secret itself).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("no credentials"),
            Self::UserPassword { user, .. } => write!(f, "user {user:?} with a password"),
            Self::Token(_) => f.write_str("a token"),
            Self::Nkey { path, .. } => write!(f, "the nkey seed in {}", path.display()),
            Self::Creds { path, .. } => write!(f, "the credentials file {}", path.display()),
        }
    }
}

/// Everything needed to build the client's options, checked and read once.
pub(super) struct Prepared {
    /// The server URLs without their userinfo (the client would otherwise log them).
    pub servers: Vec<String>,
    pub auth: Auth,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    tls_required: bool,
}

impl Prepared {
    /// `options` with the credentials and TLS applied.
    pub fn apply(&self, mut options: ConnectOptions) -> Result<ConnectOptions, SecurityError> {
        options = match &self.auth {
            Auth::Anonymous => options,
            Auth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose_secret().to_owned())
            }
            Auth::Token(token) => options.token(token.expose_secret().to_owned()),
            Auth::Nkey { seed, .. } => options.nkey(seed.expose_secret().to_owned()),
            Auth::Creds { contents, path } => options
                .credentials(contents.expose_secret())
                .map_err(|error| SecurityError::Invalid {
                    what: "credentials file",
                    path: path.clone(),
                    why: error.kind().to_string(),
                })?,
        };
        if let Some(config) = &self.tls_config {
            options = options.tls_client_config(config.as_ref().clone());
        }
        if self.tls_required {
            options = options.require_tls(true);
        }
        Ok(options)
    }
}

impl NatsSecurity {
    /// `options` with these credentials and TLS, and the servers of `urls` to connect to (their
    /// userinfo removed), for a tool that uses async-nats directly (`jwl bench`).
    pub fn client_options(
        &self,
        urls: &str,
        options: ConnectOptions,
    ) -> Result<(ConnectOptions, Vec<String>), SecurityError> {
        let prepared = self.prepare(urls)?;
        let options = prepared.apply(options)?;
        Ok((options, prepared.servers))
    }

    /// Checks the settings against `urls` (one URL or a comma-separated list), reads the files
    /// they name and builds the TLS configuration.
    pub(super) fn prepare(&self, urls: &str) -> Result<Prepared, SecurityError> {
        let mut servers = Vec::new();
        let mut from_urls: Option<(String, Option<SecretString>)> = None;
        for url in server_list(urls) {
            let (server, userinfo) = split_userinfo(&url)?;
            servers.push(server);
            let Some((user, password)) = userinfo else {
                continue;
            };
            match &from_urls {
                Some((seen_user, seen_password))
                    if *seen_user != user
                        || seen_password.as_ref().map(ExposeSecret::expose_secret)
                            != password.as_ref().map(ExposeSecret::expose_secret) =>
                {
                    return Err(SecurityError::Settings(
                        "the URLs of JWL_NATS_URL carry different credentials".to_owned(),
                    ));
                }
                Some(_) => {}
                None => from_urls = Some((user, password)),
            }
        }
        let auth = match (&self.credentials, from_urls) {
            (NatsCredentials::None, None) => Auth::Anonymous,
            (NatsCredentials::None, Some((user, Some(password)))) => {
                Auth::UserPassword { user, password }
            }
            // `nats://token@host`: a userinfo without a password is a token
            (NatsCredentials::None, Some((token, None))) => Auth::Token(token.into()),
            (_, Some(_)) => {
                return Err(SecurityError::Settings(
                    "credentials are given both in JWL_NATS_URL and in JWL_NATS_* settings; \
                     give them in one place"
                        .to_owned(),
                ));
            }
            (NatsCredentials::UserPassword { user, password }, None) => Auth::UserPassword {
                user: user.clone(),
                password: password.clone(),
            },
            (NatsCredentials::Token(token), None) => Auth::Token(token.clone()),
            (NatsCredentials::NkeySeedFile(path), None) => Auth::Nkey {
                seed: read_nkey_seed(path)?,
                path: path.clone(),
            },
            (NatsCredentials::CredsFile(path), None) => Auth::Creds {
                contents: read_creds(path)?,
                path: path.clone(),
            },
        };
        let tls_config = if self.tls.ca_file.is_some() || self.tls.cert_file.is_some() {
            Some(Arc::new(tls_config(&self.tls)?))
        } else if self.tls.key_file.is_some() {
            return Err(SecurityError::Settings(
                "JWL_NATS_TLS_KEY_FILE is set without JWL_NATS_TLS_CERT_FILE".to_owned(),
            ));
        } else {
            None
        };
        Ok(Prepared {
            servers,
            auth,
            tls_config,
            tls_required: self.tls.is_required(),
        })
    }
}

/// `url` without its userinfo, and the userinfo's user and password, percent-decoded.
type UserInfo = (String, Option<SecretString>);

fn split_userinfo(url: &str) -> Result<(String, Option<UserInfo>), SecurityError> {
    let authority_start = url.find("://").map_or(0, |at| at + 3);
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |at| authority_start + at);
    let Some(at) = url[authority_start..authority_end].rfind('@') else {
        return Ok((url.to_owned(), None));
    };
    let at = authority_start + at;
    let userinfo = &url[authority_start..at];
    let server = format!("{}{}", &url[..authority_start], &url[at + 1..]);
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map(|decoded| decoded.into_owned())
            .map_err(|_| SecurityError::Url {
                url: super::redact_userinfo(url),
                why: "its userinfo is not valid percent-encoded UTF-8".to_owned(),
            })
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (decode(user)?, Some(SecretString::from(decode(password)?))),
        None => (decode(userinfo)?, None),
    };
    if user.is_empty() {
        return Err(SecurityError::Url {
            url: super::redact_userinfo(url),
            why: "its userinfo has no user".to_owned(),
        });
    }
    Ok((server, Some((user, password))))
}

fn read_secret_file(what: &'static str, path: &Path) -> Result<SecretString, SecurityError> {
    let contents = std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    Ok(SecretString::from(contents))
}

/// The seed of an nkey seed file: its first line that is not empty nor a `#`/`//` comment (as
/// `nk -gen user` writes it, or a `.nk` file).
fn read_nkey_seed(path: &Path) -> Result<SecretString, SecurityError> {
    const WHAT: &str = "nkey seed file";
    let contents = read_secret_file(WHAT, path)?;
    let seed = contents
        .expose_secret()
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with("//"))
        .map(str::to_owned);
    let invalid = |why: &str| SecurityError::Invalid {
        what: WHAT,
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let seed = seed.ok_or_else(|| invalid("it holds no seed"))?;
    match nkeys::KeyPair::from_seed(&seed) {
        Ok(_) if seed.starts_with("SU") => Ok(SecretString::from(seed)),
        Ok(_) => Err(invalid("it holds an nkey seed that is not a user's (SU…)")),
        Err(_) => Err(invalid("it holds no valid nkey seed")),
    }
}

/// A `.creds` file's contents, checked to hold a user JWT and a seed.
fn read_creds(path: &Path) -> Result<SecretString, SecurityError> {
    const WHAT: &str = "credentials file";
    let contents = read_secret_file(WHAT, path)?;
    ConnectOptions::new()
        .credentials(contents.expose_secret())
        .map_err(|error| SecurityError::Invalid {
            what: WHAT,
            path: path.to_owned(),
            why: format!("it holds no user JWT and nkey seed ({})", error.kind()),
        })?;
    Ok(contents)
}

/// The client's TLS configuration: the CA file's roots (or the system's), and the client
/// certificate when one is given.
fn tls_config(tls: &NatsTls) -> Result<rustls::ClientConfig, SecurityError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let certificates = read_certificates("TLS CA file", path)?;
            let (added, _) = roots.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(SecurityError::Invalid {
                    what: "TLS CA file",
                    path: path.clone(),
                    why: "it holds no usable CA certificate".to_owned(),
                });
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(SecurityError::Tls(
                    "no system CA certificates found; set JWL_NATS_TLS_CA_FILE".to_owned(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| SecurityError::Tls(error.to_string()))?
        .with_root_certificates(roots);
    match (&tls.cert_file, &tls.key_file) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key_path)) => {
            let chain = read_certificates("TLS certificate file", cert)?;
            let key =
                PrivateKeyDer::from_pem_file(key_path).map_err(|error| SecurityError::Invalid {
                    what: "TLS key file",
                    path: key_path.clone(),
                    why: pem_error_text(&error),
                })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| SecurityError::Invalid {
                    what: "TLS certificate and key",
                    path: cert.clone(),
                    why: error.to_string(),
                })
        }
        (Some(_), None) => Err(SecurityError::Settings(
            "JWL_NATS_TLS_CERT_FILE is set without JWL_NATS_TLS_KEY_FILE".to_owned(),
        )),
        (None, Some(_)) => Err(SecurityError::Settings(
            "JWL_NATS_TLS_KEY_FILE is set without JWL_NATS_TLS_CERT_FILE".to_owned(),
        )),
    }
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let invalid = |why: String| SecurityError::Invalid {
        what,
        path: path.to_owned(),
        why,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| invalid(pem_error_text(&error)))?;
    if certificates.is_empty() {
        return Err(invalid("it holds no PEM certificate".to_owned()));
    }
    Ok(certificates)
}

/// A PEM reading error without the file's contents (a malformed key must not be echoed).
fn pem_error_text(error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(error) => error.to_string(),
        Error::NoItemsFound => "it holds no PEM item of the expected kind".to_owned(),
        _ => "it is not valid PEM".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "s3cr3t-Pa55word";

    fn settings(
        user: Option<&str>,
        password: Option<&str>,
        token: Option<&str>,
    ) -> CredentialSettings {
        CredentialSettings {
            user: user.map(str::to_owned),
            password: password.map(|p| SecretString::from(p.to_owned())),
            token: token.map(|t| SecretString::from(t.to_owned())),
            ..Default::default()
        }
    }

    #[test]
    fn one_kind_of_credential_at_most() {
        assert!(matches!(
            NatsCredentials::from_settings(settings(None, None, None)),
            Ok(NatsCredentials::None)
        ));
        assert!(matches!(
            NatsCredentials::from_settings(settings(Some("order"), Some(PASSWORD), None)),
            Ok(NatsCredentials::UserPassword { .. })
        ));
        assert!(matches!(
            NatsCredentials::from_settings(settings(None, None, Some("tok"))),
            Ok(NatsCredentials::Token(_))
        ));
        for (user, password, token) in [
            (Some("order"), None, None),
            (None, Some(PASSWORD), None),
            (Some("order"), Some(PASSWORD), Some("tok")),
        ] {
            let error = NatsCredentials::from_settings(settings(user, password, token))
                .unwrap_err()
                .to_string();
            assert!(error.contains("JWL_NATS_"), "{error}");
            assert!(!error.contains(PASSWORD), "{error}");
        }
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let security = NatsSecurity {
            credentials: NatsCredentials::from_settings(settings(
                Some("order"),
                Some(PASSWORD),
                None,
            ))
            .unwrap(),
            tls: NatsTls::default(),
        };
        let shown = format!("{security:?}");
        assert!(shown.contains("order"), "{shown}");
        assert!(!shown.contains(PASSWORD), "{shown}");
        let token = NatsCredentials::Token(SecretString::from(PASSWORD.to_owned()));
        assert!(!format!("{token:?}").contains(PASSWORD));
    }

    #[test]
    fn userinfo_of_the_urls_becomes_the_credentials_and_leaves_the_urls() {
        let prepared = NatsSecurity::default()
            .prepare("nats://order:p%40ss@a:4222, nats://order:p%40ss@b:4223,nats://c:4224")
            .unwrap();
        assert_eq!(
            prepared.servers,
            ["nats://a:4222", "nats://b:4223", "nats://c:4224"]
        );
        match &prepared.auth {
            Auth::UserPassword { user, password } => {
                assert_eq!(user, "order");
                assert_eq!(password.expose_secret(), "p@ss");
            }
            _ => panic!("expected user and password, got {}", prepared.auth),
        }
        assert_eq!(prepared.auth.to_string(), "user \"order\" with a password");

        let token = NatsSecurity::default().prepare("t0ken@a:4222").unwrap();
        assert_eq!(token.servers, ["a:4222"]);
        assert!(matches!(&token.auth, Auth::Token(t) if t.expose_secret() == "t0ken"));

        let plain = NatsSecurity::default()
            .prepare("nats://127.0.0.1:4222")
            .unwrap();
        assert_eq!(plain.servers, ["nats://127.0.0.1:4222"]);
        assert!(matches!(plain.auth, Auth::Anonymous));
    }

    #[test]
    fn conflicting_credentials_are_refused_without_showing_them() {
        let different = NatsSecurity::default()
            .prepare(&format!("nats://u:{PASSWORD}@a:1,nats://u:other@b:2"))
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(different.contains("different credentials"), "{different}");
        assert!(!different.contains(PASSWORD));

        let both = NatsSecurity {
            credentials: NatsCredentials::Token(SecretString::from("t".to_owned())),
            tls: NatsTls::default(),
        }
        .prepare(&format!("nats://u:{PASSWORD}@a:1"))
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
        assert!(both.contains("both in JWL_NATS_URL"), "{both}");
        assert!(!both.contains(PASSWORD));
    }

    #[test]
    fn missing_or_unusable_files_are_named() {
        let dir = std::env::temp_dir().join(format!("jwl-security-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.nk");
        let security = NatsSecurity {
            credentials: NatsCredentials::NkeySeedFile(missing.clone()),
            tls: NatsTls::default(),
        };
        let error = security.prepare("nats://a:1").err().unwrap().to_string();
        assert!(error.contains("nkey seed file"), "{error}");
        assert!(error.contains(&missing.display().to_string()), "{error}");

        let bad_seed = dir.join("bad.nk");
        std::fs::write(&bad_seed, "SUNOTAVALIDSEED-but-secret\n").unwrap();
        let error = NatsSecurity {
            credentials: NatsCredentials::NkeySeedFile(bad_seed),
            tls: NatsTls::default(),
        }
        .prepare("nats://a:1")
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("no valid nkey seed"), "{error}");
        assert!(!error.contains("but-secret"), "{error}");

        let bad_ca = dir.join("ca.pem");
        std::fs::write(&bad_ca, "not a certificate").unwrap();
        let error = NatsSecurity {
            credentials: NatsCredentials::None,
            tls: NatsTls {
                ca_file: Some(bad_ca),
                ..Default::default()
            },
        }
        .prepare("nats://a:1")
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("TLS CA file"), "{error}");

        let half = NatsSecurity {
            credentials: NatsCredentials::None,
            tls: NatsTls {
                key_file: Some(dir.join("key.pem")),
                ..Default::default()
            },
        }
        .prepare("nats://a:1")
        .err()
        .unwrap()
        .to_string();
        assert!(half.contains("JWL_NATS_TLS_CERT_FILE"), "{half}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_ca_or_a_client_certificate_requires_tls() {
        assert!(!NatsTls::default().is_required());
        assert!(
            NatsTls {
                ca_file: Some("ca.pem".into()),
                ..Default::default()
            }
            .is_required()
        );
        assert!(
            NatsTls {
                required: true,
                ..Default::default()
            }
            .is_required()
        );
    }
}
