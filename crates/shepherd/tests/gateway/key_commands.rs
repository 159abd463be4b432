//! `shepherd keys` and `shepherd usage` against the real binaries: keys issued on the config's
//! database (and through a running gateway's admin API) work at once; usage reports what was
//! served; and no secret (master key, hashing secret, client or upstream key) shows in any log
//! line the gateway wrote.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use mock_upstream::MockUpstream;
use serde_json::{Value, json};

use crate::common::*;
use crate::governance::{KEY_SECRET, MASTER_KEY};
use crate::shutdown::temp_file;

fn shepherd(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shepherd"))
        .args(args)
        .env_remove("SHEPHERD_MASTER_KEY")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// The key text a `keys create` or `keys rotate` printed.
fn issued(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("key (shown once, store it now): "))
        .expect("the key is printed")
        .to_owned()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn keys_and_usage_commands_and_no_secret_in_the_logs() {
    let mock = MockUpstream::start().await.unwrap();
    let yaml = format!(
        "server: {{listen: 127.0.0.1:0}}
admin: {{master_key: {MASTER_KEY}, key_secret: {KEY_SECRET}}}
state: {{database: sqlite://data/shepherd.db}}
providers: {{up: {{kind: openai, base_url: '{}', api_keys: ['{UPSTREAM_KEY}']}}}}
models: {{m: {{deployments: [{{provider: up}}], price: {{input: 1, output: 2}}}}}}
telemetry: {{access_log: json, log_level: info}}
",
        mock.base_url()
    );
    let config = temp_file("shepherd.yaml", &yaml);
    let path = config.path.to_str().unwrap();

    let (ok, out, err) = shepherd(&[
        "keys", "create", "--config", path, "--name", "svc", "--rpm", "100", "--models", "m",
    ]);
    assert!(ok, "{err}");
    let local_key = issued(&out);
    assert!(local_key.starts_with("sk-shep-"));
    let (ok, out, _) = shepherd(&["keys", "list", "--config", path, "--format", "json"]);
    assert!(ok);
    let listed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(listed[0]["name"], "svc");
    assert_eq!(listed[0]["limits"]["rpm"], 100);
    assert!(
        !out.contains(local_key.rsplit('-').next().unwrap()),
        "no secret in the list"
    );
    assert!(
        config
            .path
            .parent()
            .unwrap()
            .join("data/shepherd.db")
            .exists()
    );

    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_shepherd"))
            .args(["serve", "--config", path])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let stderr = child.0.stderr.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let err_tx = lines_tx.clone();
    let readers = [
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        }),
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        }),
    ];
    let mut log = Vec::new();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .unwrap()
            .unwrap();
        log.push(line.clone());
        if let Ok(entry) = serde_json::from_str::<Value>(&line)
            && entry["message"] == "ready"
        {
            break entry["addr"].as_str().unwrap().to_owned();
        }
    };
    let base = format!("http://{addr}");
    let client = test_client();
    let chat = |key: &str| {
        client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(key)
            .body(
                json!({"model": "m", "messages": [{"role": "user", "content": "count me"}]})
                    .to_string(),
            )
    };
    for _ in 0..3 {
        assert_eq!(chat(&local_key).send().await.unwrap().status(), 200);
    }
    let wrong = format!("sk-shep-{}-{}", "w".repeat(12), "W".repeat(32));
    let refused = chat(&wrong).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(!refused.text().await.unwrap().contains(&wrong));

    // Through the admin API: a key issued remotely works at once; revoked, it is refused.
    let (ok, out, err) = shepherd(&[
        "keys",
        "create",
        "--url",
        &base,
        "--master-key",
        MASTER_KEY,
        "--name",
        "remote",
    ]);
    assert!(ok, "{err}");
    let remote_key = issued(&out);
    assert_eq!(chat(&remote_key).send().await.unwrap().status(), 200);
    let (ok, out, _) = shepherd(&[
        "keys",
        "list",
        "--url",
        &base,
        "--master-key",
        MASTER_KEY,
        "--format",
        "json",
    ]);
    assert!(ok);
    let listed: Value = serde_json::from_str(out.trim()).unwrap();
    let remote_id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "remote")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, _, err) = shepherd(&[
        "keys",
        "revoke",
        &remote_id,
        "--url",
        &base,
        "--master-key",
        MASTER_KEY,
    ]);
    assert!(ok, "{err}");
    assert_eq!(chat(&remote_key).send().await.unwrap().status(), 401);
    let (ok, _, err) = shepherd(&[
        "keys",
        "list",
        "--url",
        &base,
        "--master-key",
        "not-the-master-key",
    ]);
    assert!(!ok && err.contains("401"), "{err}");

    // The ledger is written in batches; the report reads the same database.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (ok, out, err) = shepherd(&[
        "usage",
        "--config",
        path,
        "--by",
        "key,model",
        "--since",
        "1h",
        "--format",
        "csv",
    ]);
    assert!(ok, "{err}");
    let svc = out
        .lines()
        .find(|l| l.starts_with("svc,"))
        .unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = svc.split(',').collect();
    assert_eq!(cells[1], "m");
    assert_eq!(cells[2], "3", "three requests: {out}");
    let (ok, out, _) = shepherd(&[
        "usage",
        "--url",
        &base,
        "--master-key",
        MASTER_KEY,
        "--by",
        "key",
        "--since",
        "1h",
    ]);
    assert!(ok);
    assert!(out.lines().next().unwrap().starts_with("key"), "{out}");
    assert!(out.contains("remote"), "{out}");

    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.0.wait()).await;
    for reader in readers {
        let _ = reader.join();
    }
    while let Ok(line) = lines.try_recv() {
        log.push(line);
    }
    assert!(
        log.iter().any(|l| l.contains("virtual key created")),
        "the log says what happened"
    );
    for secret in [
        MASTER_KEY,
        KEY_SECRET,
        UPSTREAM_KEY,
        local_key.as_str(),
        remote_key.as_str(),
        local_key.rsplit('-').next().unwrap(),
        remote_key.rsplit('-').next().unwrap(),
        wrong.as_str(),
    ] {
        assert!(
            !log.iter().any(|line| line.contains(secret)),
            "a secret is in the log: {secret}"
        );
    }
}

#[test]
fn key_commands_explain_what_is_wrong() {
    let config = temp_file("shepherd.yaml", "providers: {}\n");
    let path = config.path.to_str().unwrap();
    let (ok, _, err) = shepherd(&["keys", "create", "--config", path, "--name", "x"]);
    assert!(!ok);
    assert!(err.contains("admin.key_secret"), "{err}");
    let (ok, _, err) = shepherd(&["usage", "--config", path, "--by", "colour"]);
    assert!(!ok);
    assert!(err.contains("cannot group by `colour`"), "{err}");
}
