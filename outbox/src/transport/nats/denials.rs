//! Publish permission violations the server reports on the side (`-ERR 'Permissions Violation
//! for Publish to "…"'`, the message itself is dropped): recorded from the client's events, so
//! that a publish the server refused fails at once with [`TransportError::Denied`] instead of
//! waiting for an acknowledgement that never comes.
//!
//! [`TransportError::Denied`]: crate::transport::TransportError::Denied

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::watch;

/// How many recent denials are remembered (a publish looks only at those after it was sent).
const REMEMBERED: usize = 256;

/// The recent publish denials of one connection, numbered.
#[derive(Debug)]
pub(super) struct Denials {
    /// The number of the latest denial; receivers wake up on each new one.
    latest: watch::Sender<u64>,
    recent: Mutex<VecDeque<(u64, String)>>,
}

impl Default for Denials {
    fn default() -> Self {
        Self {
            latest: watch::Sender::new(0),
            recent: Mutex::new(VecDeque::new()),
        }
    }
}

impl Denials {
    /// Records `server_error` (the text of a server `-ERR`) if it denies a publish.
    pub fn record(&self, server_error: &str) {
        let Some(subject) = denied_publish_subject(server_error) else {
            return;
        };
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        let number = *self.latest.borrow() + 1;
        if recent.len() == REMEMBERED {
            recent.pop_front();
        }
        recent.push_back((number, subject.to_owned()));
        drop(recent);
        self.latest.send_replace(number);
    }

    /// The number of the latest denial: a publish sent after this reads only later ones.
    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    /// Whether publishing to `subject` was denied after denial number `after`.
    pub fn denied_after(&self, after: u64, subject: &str) -> bool {
        self.recent.lock().is_ok_and(|recent| {
            recent
                .iter()
                .any(|(number, denied)| *number > after && denied == subject)
        })
    }

    /// Resolves once publishing to `subject` has been denied after denial number `after`.
    pub async fn wait_denied(&self, after: u64, subject: &str) {
        let mut changes = self.latest.subscribe();
        loop {
            if self.denied_after(after, subject) {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// The subject of `Permissions Violation for Publish to "<subject>"`, if `server_error` is one.
fn denied_publish_subject(server_error: &str) -> Option<&str> {
    const MARKER: &str = "permissions violation for publish to ";
    let start = server_error.to_ascii_lowercase().find(MARKER)? + MARKER.len();
    let rest = server_error[start..].trim_start().strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_violations_name_their_subject() {
        assert_eq!(
            denied_publish_subject(
                r#"Permissions Violation for Publish to "jwl.evt.1.payment.captured""#
            ),
            Some("jwl.evt.1.payment.captured")
        );
        assert_eq!(
            denied_publish_subject(r#"'Permissions Violation for Publish to "a.b"'"#),
            Some("a.b")
        );
        assert_eq!(
            denied_publish_subject(r#"Permissions Violation for Subscription to "a.b""#),
            None
        );
        assert_eq!(denied_publish_subject("Authorization Violation"), None);
    }

    #[tokio::test]
    async fn a_publish_sees_only_denials_after_it_was_sent() {
        let denials = Denials::default();
        denials.record(r#"Permissions Violation for Publish to "a""#);
        let sent = denials.latest();
        assert!(!denials.denied_after(sent, "a"));
        denials.record(r#"Permissions Violation for Publish to "b""#);
        assert!(!denials.denied_after(sent, "a"));
        assert!(denials.denied_after(sent, "b"));
        // already recorded: resolves at once
        denials.wait_denied(sent, "b").await;
    }
}
