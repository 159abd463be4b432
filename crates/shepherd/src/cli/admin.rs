//! `shepherd keys` and `shepherd usage`: the same operations as the admin API, either on the
//! database named by a config file (local) or through a running gateway's admin API (`--url`,
//! with the master key).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::config::{self, Timeouts};
use crate::governance::keys::Hasher;
use crate::governance::manage::{self, KeySpec, ManageError};
use crate::store::{Store, UsageQuery};

/// Where the command acts.
#[derive(Debug, Args)]
pub struct Target {
    /// Config file whose database to use. Default: $SHEPHERD_CONFIG, else ./shepherd.yaml.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// A running gateway's base URL (e.g. http://127.0.0.1:8081): act through its admin API.
    #[arg(long, global = true)]
    url: Option<String>,
    /// The admin master key for `--url`. Default: $SHEPHERD_MASTER_KEY.
    #[arg(long, global = true)]
    master_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// Models or one-`*` patterns, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        #[arg(long)]
        rpm: Option<u64>,
        #[arg(long)]
        tpm: Option<u64>,
        #[arg(long)]
        concurrency: Option<u32>,
        #[arg(long)]
        budget_usd: Option<f64>,
        /// day, week, month (default) or total.
        #[arg(long)]
        budget_period: Option<String>,
        /// E.g. 30d.
        #[arg(long)]
        expires_in: Option<String>,
        /// A JSON object.
        #[arg(long)]
        metadata: Option<String>,
        /// The model used when a request names none.
        #[arg(long)]
        default_model: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Refuse a key from now on.
    Revoke { id: String },
    /// Issue a new secret; the old one keeps working for the overlap.
    Rotate {
        id: String,
        #[arg(long, default_value = "1h")]
        overlap: String,
    },
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Group by: key, model, deployment, day, hour (comma-separated).
    #[arg(long, default_value = "key,model")]
    by: String,
    /// Start of the window: a duration ago (24h) or an RFC 3339 time.
    #[arg(long, default_value = "24h")]
    since: String,
    /// End of the window (default: now).
    #[arg(long)]
    until: Option<String>,
    /// Only this key id.
    #[arg(long)]
    key: Option<String>,
    /// table, json or csv.
    #[arg(long, default_value = "table")]
    format: String,
}

fn out(text: &str) {
    let _ = writeln!(std::io::stdout(), "{text}");
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "shepherd: {message}");
    ExitCode::FAILURE
}

/// The local database and hasher of a config file.
fn local(target: &Target) -> Result<(std::sync::Arc<dyn Store>, Option<Hasher>), String> {
    let path = super::config_path(target.config.clone());
    let config = config::load_file(&path).map_err(|problems| format!("{problems}"))?;
    let store = crate::store::open(&config.state.database).map_err(|e| e.to_string())?;
    let hasher = config
        .admin
        .as_ref()
        .map(|admin| Hasher::new(admin.key_secret.expose()));
    Ok((store, hasher))
}

/// One call to a gateway's admin API.
fn remote(
    target: &Target,
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let master_key = target
        .master_key
        .clone()
        .or_else(|| std::env::var("SHEPHERD_MASTER_KEY").ok())
        .ok_or("--url needs --master-key or $SHEPHERD_MASTER_KEY")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(60),
        };
        let client = crate::providers::build_client(&timeouts, &Default::default())?;
        let uri = format!("{}{path}", base.trim_end_matches('/'));
        let request = axum::http::Request::builder()
            .method(method)
            .uri(&uri)
            .header("authorization", format!("Bearer {master_key}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| format!("{uri}: {e}"))?;
        let response = tokio::time::timeout(timeouts.total, client.request(request))
            .await
            .map_err(|_| format!("{uri}: no answer"))?
            .map_err(|e| format!("{uri}: {e}"))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(format!(
                "{} {}",
                status.as_u16(),
                value["error"]["message"].as_str().unwrap_or("error")
            ))
        }
    })
}

fn spec_of(command: &KeysCommand) -> Result<Value, String> {
    let KeysCommand::Create {
        name,
        models,
        rpm,
        tpm,
        concurrency,
        budget_usd,
        budget_period,
        expires_in,
        metadata,
        default_model,
    } = command
    else {
        return Ok(json!({}));
    };
    let mut spec =
        json!({"name": name, "limits": {"rpm": rpm, "tpm": tpm, "concurrency": concurrency}});
    if !models.is_empty() {
        spec["models"] = json!(models);
    }
    if let Some(usd) = budget_usd {
        spec["budget"] = json!({"usd": usd, "period": budget_period});
    }
    if let Some(expires_in) = expires_in {
        spec["expires_in"] = json!(expires_in);
    }
    if let Some(default_model) = default_model {
        spec["default_model"] = json!(default_model);
    }
    if let Some(metadata) = metadata {
        let metadata: Value =
            serde_json::from_str(metadata).map_err(|e| format!("--metadata is not JSON: {e}"))?;
        spec["metadata"] = metadata;
    }
    Ok(spec)
}

fn manage_error(error: ManageError) -> String {
    error.to_string()
}

pub fn keys(command: KeysCommand, target: &Target) -> ExitCode {
    let result = match &target.url {
        Some(base) => keys_remote(&command, target, base),
        None => keys_local(&command, target),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn keys_local(command: &KeysCommand, target: &Target) -> Result<(), String> {
    let (store, hasher) = local(target)?;
    match command {
        KeysCommand::Create { .. } => {
            let spec: KeySpec =
                serde_json::from_value(spec_of(command)?).map_err(|e| e.to_string())?;
            let (key, text) =
                manage::create(store.as_ref(), hasher.as_ref(), spec).map_err(manage_error)?;
            print_created(&manage::view(&key, None, None), &text);
        }
        KeysCommand::List { format } => {
            let keys: Vec<Value> = store
                .load_keys()
                .map_err(|e| e.to_string())?
                .iter()
                .map(|key| manage::view(key, None, None))
                .collect();
            print_keys(&keys, format);
        }
        KeysCommand::Revoke { id } => {
            let key = manage::revoke(store.as_ref(), id).map_err(manage_error)?;
            out(&format!("revoked {} ({})", key.id, key.name));
        }
        KeysCommand::Rotate { id, overlap } => {
            let overlap = humantime::parse_duration(overlap)
                .map_err(|_| format!("--overlap `{overlap}` is not a duration"))?;
            let (key, text) = manage::rotate(store.as_ref(), hasher.as_ref(), id, overlap)
                .map_err(manage_error)?;
            print_created(&manage::view(&key, None, None), &text);
        }
    }
    Ok(())
}

fn keys_remote(command: &KeysCommand, target: &Target, base: &str) -> Result<(), String> {
    match command {
        KeysCommand::Create { .. } => {
            let view = remote(target, base, "POST", "/admin/keys", Some(spec_of(command)?))?;
            print_created(&view, view["key"].as_str().unwrap_or_default());
        }
        KeysCommand::List { format } => {
            let list = remote(target, base, "GET", "/admin/keys", None)?;
            print_keys(
                list["data"].as_array().map_or(&[][..], Vec::as_slice),
                format,
            );
        }
        KeysCommand::Revoke { id } => {
            let view = remote(target, base, "DELETE", &format!("/admin/keys/{id}"), None)?;
            out(&format!(
                "revoked {} ({})",
                id,
                view["name"].as_str().unwrap_or_default()
            ));
        }
        KeysCommand::Rotate { id, overlap } => {
            let view = remote(
                target,
                base,
                "POST",
                &format!("/admin/keys/{id}/rotate"),
                Some(json!({"overlap": overlap})),
            )?;
            print_created(&view, view["key"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}

fn print_created(view: &Value, text: &str) {
    let mut view = view.clone();
    if let Value::Object(map) = &mut view {
        map.remove("key");
    }
    out(&serde_json::to_string_pretty(&view).unwrap_or_default());
    out(&format!("\nkey (shown once, store it now): {text}"));
}

fn print_keys(keys: &[Value], format: &str) {
    if format == "json" {
        out(&Value::from(keys.to_vec()).to_string());
        return;
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|key| {
            let text = |v: &Value| match v {
                Value::Null => "-".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vec![
                text(&key["id"]),
                text(&key["name"]),
                if key["enabled"] == true {
                    "active"
                } else {
                    "revoked"
                }
                .to_owned(),
                text(&key["models"]),
                text(&key["limits"]["rpm"]),
                text(&key["limits"]["tpm"]),
                text(&key["budget"]["usd"]),
                text(&key["expires_at"]),
            ]
        })
        .collect();
    print_table(
        &[
            "id",
            "name",
            "state",
            "models",
            "rpm",
            "tpm",
            "budget_usd",
            "expires_at",
        ],
        &rows,
    );
}

fn print_table(head: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in rows {
        for (n, cell) in row.iter().enumerate() {
            widths[n] = widths[n].max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    out(&line(head.to_vec()));
    for row in rows {
        out(&line(row.iter().map(String::as_str).collect()));
    }
}

pub fn usage(args: &UsageArgs, target: &Target) -> ExitCode {
    let rows = match &target.url {
        Some(base) => {
            let mut path = format!(
                "/admin/usage?group_by={}&from={}",
                args.by.replace(' ', ""),
                args.since
            );
            if let Some(until) = &args.until {
                path.push_str(&format!("&to={until}"));
            }
            if let Some(key) = &args.key {
                path.push_str(&format!("&key={key}"));
            }
            remote(target, base, "GET", &path, None).map(|report| report["data"].clone())
        }
        None => usage_local(args, target),
    };
    let rows = match rows {
        Ok(Value::Array(rows)) => rows,
        Ok(_) => Vec::new(),
        Err(message) => return fail(&message),
    };
    let groups: Vec<&str> = args
        .by
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect();
    let columns: Vec<&str> = groups
        .iter()
        .copied()
        .chain([
            "requests",
            "errors",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cost_usd",
        ])
        .collect();
    let cell = |row: &Value, column: &str| match &row[column] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(n) if column == "cost_usd" => format!("{:.6}", n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    };
    match args.format.as_str() {
        "json" => out(&Value::Array(rows).to_string()),
        "csv" => {
            out(&columns.join(","));
            for row in &rows {
                let cells: Vec<String> = columns
                    .iter()
                    .map(|c| {
                        let value = cell(row, c);
                        if value.contains([',', '"', '\n']) {
                            format!("\"{}\"", value.replace('"', "\"\""))
                        } else {
                            value
                        }
                    })
                    .collect();
                out(&cells.join(","));
            }
        }
        _ => {
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|row| columns.iter().map(|c| cell(row, c)).collect())
                .collect();
            print_table(&columns, &table);
        }
    }
    ExitCode::SUCCESS
}

fn usage_local(args: &UsageArgs, target: &Target) -> Result<Value, String> {
    let (store, _) = local(target)?;
    let query = UsageQuery {
        group_by: manage::group_by(&args.by).map_err(manage_error)?,
        from_ms: Some(manage::time_bound(&args.since).map_err(manage_error)?),
        to_ms: args
            .until
            .as_deref()
            .map(manage::time_bound)
            .transpose()
            .map_err(manage_error)?,
        key_id: args.key.clone(),
    };
    let rows = store.report(&query).map_err(|e| e.to_string())?;
    Ok(manage::report_json(&rows))
}
