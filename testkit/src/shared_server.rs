//! A server process a test shares between the code under test and its fault injector: each
//! operation on it (restart, kill, stop, start again) runs on a blocking thread, one at a time.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use jwl_local_infra::InfraError;

#[derive(Debug)]
pub(crate) struct SharedServer<S> {
    server: Arc<Mutex<S>>,
    /// What the server is, for the error of a task that failed.
    what: &'static str,
}

impl<S: Send + 'static> SharedServer<S> {
    pub fn new(server: S, what: &'static str) -> Self {
        Self {
            server: Arc::new(Mutex::new(server)),
            what,
        }
    }

    /// Runs `operation` on the server on a blocking thread (a panicked earlier operation does not
    /// keep the others from it).
    pub async fn run<T, F>(&self, operation: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T, InfraError> + Send + 'static,
    {
        let server = Arc::clone(&self.server);
        let result = tokio::task::spawn_blocking(move || {
            let mut server = server
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            operation(&mut server)
        })
        .await;
        Ok(result.with_context(|| format!("{} task failed", self.what))??)
    }
}
