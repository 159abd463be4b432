//! `shepherd health URL`: a probe for container health checks that needs no curl. GETs the URL
//! (default `http://127.0.0.1:8080/readyz`), exits 0 on a 2xx answer within the timeout, 1
//! otherwise, printing the status (or why there was none) on one line.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::config::Timeouts;

/// Probes `url` within `timeout`.
pub fn probe(url: &str, timeout: Duration) -> ExitCode {
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())
        .and_then(|runtime| runtime.block_on(get(url, timeout)));
    match outcome {
        Ok(status) if (200..300).contains(&status) => {
            let _ = writeln!(std::io::stdout(), "{url}: {status}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            let _ = writeln!(std::io::stderr(), "{url}: {status}");
            ExitCode::FAILURE
        }
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "{url}: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn get(url: &str, timeout: Duration) -> Result<u16, String> {
    let timeouts = Timeouts {
        connect: timeout,
        first_byte: timeout,
        idle: timeout,
        total: timeout,
    };
    let client = crate::providers::build_client(&timeouts, &Default::default())?;
    let request = axum::http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|error| error.to_string())?;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|error| error.to_string())?;
    Ok(response.status().as_u16())
}
