//! A private PostgreSQL cluster: `initdb` into a temporary directory, `pg_ctl start` on a free
//! loopback port, trust authentication for the `shepherd` role. Run as the `postgres` user
//! (`runuser`) when the tests run as root, since PostgreSQL refuses root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A PostgreSQL cluster on `127.0.0.1:port`; stopped and removed on drop.
pub struct Postgres {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    running: bool,
}

/// The directory of `initdb` and `pg_ctl`: on PATH, else Debian's `/usr/lib/postgresql/N/bin`.
fn bin_dir() -> PathBuf {
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut found: Vec<PathBuf> = versions
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("pg_ctl").exists())
            .collect();
        found.sort();
        if let Some(newest) = found.pop() {
            return newest;
        }
    }
    panic!("no PostgreSQL server binaries (pg_ctl) found; install Debian's postgresql package")
}

impl Postgres {
    /// Creates and starts a cluster on a free port, with a `shepherd` superuser.
    pub fn start() -> Postgres {
        let dir = super::temp_dir("postgres");
        let bin = bin_dir();
        let mut postgres = Postgres {
            port: super::free_port(),
            dir,
            bin,
            running: false,
        };
        if super::is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&postgres.dir)
                .status()
                .expect("chown runs");
            assert!(
                status.success(),
                "cannot give the cluster directory to postgres"
            );
        }
        let data = postgres.data();
        postgres.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "shepherd",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        postgres.resume();
        postgres
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    /// A PostgreSQL program, run as `postgres` when the tests run as root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if super::is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    /// Runs a PostgreSQL program and asserts it worked.
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", path.display()));
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` (create it first with `create_database`, or use `postgres`).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://shepherd@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name`.
    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// Runs SQL with `psql` against database `db`; its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "shepherd",
                "-d",
                db,
            ])
            .args(["-c", sql])
            .output()
            .expect("psql runs (Debian's postgresql-client)");
        assert!(
            out.status.success(),
            "psql failed on `{sql}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server at once (`-m immediate`: an outage, no checkpoint).
    pub fn kill(&mut self) {
        if self.running {
            self.run(
                "pg_ctl",
                &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
            );
            self.running = false;
        }
    }

    /// Starts the server again on the same port and data.
    pub fn resume(&mut self) {
        let log = self.dir.join("server.log");
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        self.running = true;
        super::wait_for_port(self.port, Duration::from_secs(30), "postgres");
    }

    /// The server's log so far (for assertions and failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .command("pg_ctl")
                .args(["-D", &self.data(), "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
