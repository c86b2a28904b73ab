//! Connecting to Redis: the client (TLS for `rediss://`, a private
//! authority with `--redis-ca`), connections whose every command gives up
//! after `REDIS_TIMEOUT`, reconnection with backoff, and one line on stderr
//! each time a connection comes up or goes down.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{BACKOFF, REDIS_TIMEOUT, Target};
use crate::config::redacted;

/// The `redis` client for `target`: TLS for `rediss://`, trusting `ca` if given.
pub fn client(target: &Target<'_>) -> Result<redis::Client, String> {
    let url = target.url;
    let fail = |e: redis::RedisError| format!("--redis {}: {e}", redacted(url));
    if url.starts_with("rediss://") {
        // One crypto provider for rustls, chosen here rather than by feature unification.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match target.ca {
        Some(pem) => {
            check_certificates(pem)?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            };
            redis::Client::build_with_tls(url, certificates).map_err(fail)
        }
        None => redis::Client::open(url).map_err(fail),
    }
}

/// Whether `pem` holds certificates and nothing unreadable, so a wrong
/// `--redis-ca` file stops the server at once instead of leaving it down.
fn check_certificates(pem: &[u8]) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let found: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let found = found.map_err(|e| format!("--redis-ca: not PEM certificates: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    match roots.add_parsable_certificates(found) {
        (0, _) => Err("--redis-ca: no certificate in the file".into()),
        (_, 0) => Ok(()),
        (_, bad) => Err(format!(
            "--redis-ca: {bad} certificate(s) could not be read"
        )),
    }
}

/// Says on stderr when a connection to Redis comes up or goes down, and why:
/// once per change, so a wrong password or an untrusted certificate is
/// visible without flooding the log while it retries.
pub struct Reporter {
    what: &'static str,
    last: Option<bool>,
}

impl Reporter {
    pub fn new(what: &'static str) -> Self {
        Self { what, last: None }
    }

    pub fn up(&mut self) {
        if self.last != Some(true) {
            eprintln!("websocket-public-chat: Redis {}: up", self.what);
        }
        self.last = Some(true);
    }

    pub fn down(&mut self, why: &redis::RedisError) {
        if self.last != Some(false) {
            eprintln!("websocket-public-chat: Redis {}: down: {why}", self.what);
        }
        self.last = Some(false);
    }
}

/// Why a command did not run: there was no connection (it surely did not),
/// or it failed on one (it may have).
pub enum Failure {
    NotConnected,
    Failed,
}

/// A connection made on demand, with backoff after failures, that says on
/// stderr when it comes up or goes down.
pub struct Link<'a> {
    client: &'a redis::Client,
    connection: Option<Connection>,
    reporter: Reporter,
    retry_at: Instant,
    backoff: Duration,
}

impl<'a> Link<'a> {
    pub fn new(client: &'a redis::Client, what: &'static str) -> Self {
        Self {
            client,
            connection: None,
            reporter: Reporter::new(what),
            retry_at: Instant::now(),
            backoff: BACKOFF.0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.connection.is_some()
    }

    /// Runs `command` on the connection (connecting first if it is time to);
    /// a failed command drops the connection.
    pub fn run<T>(
        &mut self,
        command: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Failure> {
        if self.connection.is_none() && Instant::now() >= self.retry_at {
            match connect(self.client) {
                Ok(connection) => {
                    self.connection = Some(connection);
                    self.reporter.up();
                    self.backoff = BACKOFF.0;
                }
                Err(e) => {
                    self.reporter.down(&e);
                    self.retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(BACKOFF.1);
                }
            }
        }
        let connection = self.connection.as_mut().ok_or(Failure::NotConnected)?;
        command(connection).map_err(|e| {
            self.reporter.down(&e);
            self.connection = None;
            Failure::Failed
        })
    }
}

/// Redis connections open in this process (each one socket), for
/// `/metrics`'s `process_open_fds`.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// How many connections to Redis are open now.
pub fn open_connections() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// A connection to Redis, counted in `OPEN` while it lives.
pub struct Connection(redis::Connection);

impl Deref for Connection {
    type Target = redis::Connection;
    fn deref(&self) -> &redis::Connection {
        &self.0
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut redis::Connection {
        &mut self.0
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection whose every read and write gives up after `REDIS_TIMEOUT`,
/// so a Redis that stopped answering is noticed instead of waited for.
pub fn connect(client: &redis::Client) -> redis::RedisResult<Connection> {
    let connection = client.get_connection_with_timeout(REDIS_TIMEOUT)?;
    OPEN.fetch_add(1, Ordering::Relaxed);
    let connection = Connection(connection);
    connection.set_read_timeout(Some(REDIS_TIMEOUT))?;
    connection.set_write_timeout(Some(REDIS_TIMEOUT))?;
    Ok(connection)
}
