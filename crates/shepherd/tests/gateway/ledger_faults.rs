//! The database under the real binary goes wrong: deleted while it runs (written back from the
//! open connection: keys and usage survive a restart), or read-only from the start (the gateway
//! serves, keeps usage in memory, and says so in `/readyz` and the metrics). Never a crash.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mock_upstream::MockUpstream;
use serde_json::json;

use crate::common::*;
use crate::governance::{KEY_SECRET, MASTER_KEY};
use crate::shutdown::{TempFile, temp_file};

fn yaml(mock: &MockUpstream) -> String {
    format!(
        "server: {{listen: 127.0.0.1:0}}
admin: {{master_key: {MASTER_KEY}, key_secret: {KEY_SECRET}}}
providers: {{up: {{kind: openai, base_url: '{}'}}}}
models: {{m: {{deployments: [{{provider: up}}]}}}}
telemetry: {{access_log: off, log_level: info}}
",
        mock.base_url()
    )
}

/// The binary on `config`, and its address.
fn spawn(config: &TempFile) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shepherd"))
        .args(["serve", "--config"])
        .arg(&config.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if entry["message"] == "ready" {
                let _ = addr_tx.send(entry["addr"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    (child, addr)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

async fn hello(client: &reqwest::Client, addr: &str, key: &str) -> u16 {
    client
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth(key)
        .body(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn requests_in_ledger(client: &reqwest::Client, addr: &str) -> u64 {
    let report = json_of(
        client
            .get(format!("http://{addr}/admin/usage?group_by=key&from=1h"))
            .bearer_auth(MASTER_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    report["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["requests"].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn a_database_deleted_while_running_loses_no_key_and_no_record() {
    let mock = MockUpstream::start().await.unwrap();
    let config = temp_file("shepherd.yaml", &yaml(&mock));
    let database = config.path.parent().unwrap().join("shepherd.db");
    let (child, addr) = spawn(&config);
    let client = test_client();
    let created = json_of(
        client
            .post(format!("http://{addr}/admin/keys"))
            .bearer_auth(MASTER_KEY)
            .body(json!({"name": "survivor"}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let key = created["key"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(hello(&client, &addr, &key).await, 200);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
    }
    for _ in 0..3 {
        assert_eq!(hello(&client, &addr, &key).await, 200);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(database.exists(), "the database was written back");
    stop(child);
    // A restart reads the file: the key still works and every request is in the ledger.
    let (child, addr) = spawn(&config);
    assert_eq!(
        hello(&client, &addr, &key).await,
        200,
        "the virtual key survived"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(requests_in_ledger(&client, &addr).await, 7);
    stop(child);
}

#[tokio::test]
async fn a_read_only_database_is_served_from_and_reported_never_a_crash() {
    let mock = MockUpstream::start().await.unwrap();
    let config = temp_file(
        "shepherd.yaml",
        &(yaml(&mock) + &format!("keys: [{{name: svc, key: {CLIENT_KEY}}}]\n")),
    );
    let database = config.path.parent().unwrap().join("shepherd.db");
    // A database made by a first run, then made immutable.
    let (child, addr) = spawn(&config);
    let client = test_client();
    assert_eq!(hello(&client, &addr, CLIENT_KEY).await, 200);
    stop(child);
    let immutable = Command::new("chattr")
        .arg("+i")
        .arg(&database)
        .status()
        .expect("chattr (e2fsprogs) is needed for this test");
    assert!(immutable.success(), "chattr +i {}", database.display());
    struct Mutable(std::path::PathBuf);
    impl Drop for Mutable {
        fn drop(&mut self) {
            let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        }
    }
    let _mutable = Mutable(database.clone());
    let (child, addr) = spawn(&config);
    for _ in 0..5 {
        assert_eq!(hello(&client, &addr, CLIENT_KEY).await, 200);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ready = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "still serving");
    let ready = json_of(ready).await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert!(
        ready["checks"]["sqlite"]
            .as_str()
            .unwrap()
            .contains("read-only"),
        "{ready}"
    );
    let metrics = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("shepherd_state_backend_up{backend=\"sqlite\"} 0"),
        "{metrics}"
    );
    assert_eq!(hello(&client, &addr, CLIENT_KEY).await, 200);
    stop(child);
}
