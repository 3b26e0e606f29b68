//! What the `jwl` binary's integration tests share.

use std::process::Command;

/// The `jwl` binary under test.
const JWL: &str = env!("CARGO_BIN_EXE_jwl");

/// `jwl` with a clean `JWL_*` environment (the developer's own settings must not leak in; the
/// tools directory stays, so the tests find the same private servers) and `RUST_LOG` at `log`.
pub fn jwl_clean(log: &str) -> Command {
    let mut command = Command::new(JWL);
    for (key, _) in std::env::vars() {
        if key.starts_with("JWL_") && key != "JWL_TOOLS_DIR" {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", log);
    command
}

/// A loopback port free right now.
#[allow(dead_code)] // not every test binary that includes this module needs it
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// A token from `jwl token` signed with `secret`, as the README says to mint one.
#[allow(dead_code)] // not every test binary that includes this module needs it
pub fn token(secret: &str, sub: &str, scopes: &str) -> String {
    let output = jwl_clean("warn")
        .env("JWL_JWT_SECRET", secret)
        .args(["token", "--sub", sub, "--scope", scopes, "--ttl", "1h"])
        .output()
        .expect("running jwl token");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("jwl token prints UTF-8")
        .trim()
        .to_owned()
}
