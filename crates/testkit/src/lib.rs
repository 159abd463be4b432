//! Real servers for tests, each private to the test that starts it: a `redis-server` and a
//! PostgreSQL cluster (`initdb` + `pg_ctl`), on loopback, on free ports, in temporary
//! directories removed on drop. Nothing is mocked; the binaries come from Debian's packages
//! (`scripts/test` installs them). When a binary is missing the start fails with a message that
//! says which package to install.
//!
//! Both can be stopped and started again on the same port and data (outage tests).

#![allow(clippy::expect_used, clippy::panic)]

mod postgres;
mod redis;

pub use postgres::Postgres;
pub use redis::Redis;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A fresh directory under the system's temporary directory.
fn temp_dir(what: &str) -> PathBuf {
    let unique = format!(
        "shepherd-{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let dir = std::env::temp_dir().join(unique);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// Waits until something listens on `port` (or panics after `within`).
fn wait_for_port(port: u16, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on 127.0.0.1:{port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether running as root (PostgreSQL refuses to run as root: it is run as `postgres`).
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}
