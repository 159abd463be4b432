//! `shepherd check`: names file, line and field of every problem, and exits non-zero.

use std::process::Command;

use crate::shutdown::temp_file;

#[test]
fn check_names_file_line_and_field() {
    let broken = "\
server:
  listen: 127.0.0.1:8080
  timeouts: {idle: soon}
providers:
  openai: {kind: openai, base_url: https://api.openai.com/v1, api_keys: ['${SHEPHERD_TEST_UNSET_KEY}']}
models:
  gpt-4.1:
    deployments: [{provider: opnai}]
    stratgy: round_robin
keys:
  - {name: svc, key: k1}
  - {name: svc, key: k2}
";
    let broken = temp_file("broken.yaml", broken);
    let path = &broken.path;
    let output = Command::new(env!("CARGO_BIN_EXE_shepherd"))
        .args(["check", "--config"])
        .arg(path)
        .env_remove("SHEPHERD_TEST_UNSET_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    let file = path.display().to_string();
    for expected in [
        format!("{file}: line 3: server.timeouts.idle: invalid duration `soon`"),
        format!(
            "{file}: line 5: providers.openai.api_keys[0]: environment variable `SHEPHERD_TEST_UNSET_KEY` is not set"
        ),
        format!("{file}: line 9: models.gpt-4.1.stratgy: unknown field `stratgy`"),
        format!("{file}: line 12: keys[1].name: duplicate key name `svc`"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    assert!(stderr.contains("problem(s) in"), "{stderr}");

    let good = temp_file(
        "good.yaml",
        "providers: {demo: {kind: mock}}\nmodels: {m: {deployments: [{provider: demo}]}}\n",
    );
    let output = Command::new(env!("CARGO_BIN_EXE_shepherd"))
        .args(["check", "--config"])
        .arg(&good.path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn an_empty_config_serves_nothing_and_is_refused_unless_on_purpose() {
    let empty = temp_file("empty.yaml", "");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_shepherd"))
            .args(args)
            .arg("--config")
            .arg(&empty.path)
            .output()
            .unwrap()
    };
    let output = run(&["check"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("serves nothing"), "{stderr}");
    assert!(run(&["check", "--allow-empty"]).status.success());
    let output = run(&["serve"]);
    assert!(!output.status.success(), "an empty config does not start");
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("serves nothing")
    );
}
