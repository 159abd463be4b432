//! `loadgen`: the load side of `bench/run.sh`: plain requests (closed loop, or open loop at a fixed
//! rate), streams (time to first chunk, delay of each chunk beyond the upstream's pacing), many
//! held connections, cold start. Every subcommand prints one JSON object on stdout.

mod http_load;
mod stats;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::Mutex;

use stats::Summary;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Plain POST requests: closed loop with `concurrency` connections, or open loop at `rate`.
    Http {
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "")]
        key: String,
        #[arg(long)]
        body: String,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Stop after this many seconds (closed and open loop).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Closed loop: stop after this many requests instead (0: by time).
        #[arg(long, default_value_t = 0)]
        requests: u64,
        /// Open loop: requests per second, started on schedule whatever the answers do;
        /// latency counts from the scheduled start (no coordinated omission).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Paced streams: `concurrency` workers each run streams back to back for `seconds`.
    Stream {
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "")]
        key: String,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// At most this many streams per worker (0: no limit).
        #[arg(long, default_value_t = 0)]
        streams_per_worker: usize,
        #[arg(long, default_value_t = 64)]
        chunks: usize,
        #[arg(long, default_value_t = 5)]
        delay_ms: u64,
        /// The model named in the stream requests.
        #[arg(long, default_value = "gpt-4.1")]
        model: String,
    },
    /// Opens `connections` keep-alive connections, prints `{"ready":N}`, holds them `seconds`.
    Hold {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 1024)]
        connections: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Starts a command and polls `url` until it answers 200; prints the milliseconds it took.
    Coldstart {
        #[arg(long)]
        url: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

fn emit(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn client(pool: usize) -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Cmd::Http {
            url,
            key,
            body,
            concurrency,
            seconds,
            requests,
            rate,
        } => {
            let client = client(concurrency.max(64))?;
            let plan = http_load::Plan {
                url,
                key,
                body,
                duration: Duration::from_secs_f64(seconds),
                requests,
            };
            let report = match rate {
                Some(rate) => http_load::open_loop(client, plan, rate, concurrency).await,
                None => http_load::closed_loop(client, plan, concurrency).await,
            };
            emit(&report);
        }
        Cmd::Stream {
            url,
            key,
            concurrency,
            seconds,
            streams_per_worker,
            chunks,
            delay_ms,
            model,
        } => {
            let plan = StreamPlan {
                model,
                url,
                key,
                chunks,
                delay: Duration::from_millis(delay_ms),
                until: Instant::now() + Duration::from_secs_f64(seconds),
                max_streams: streams_per_worker,
            };
            emit(&run_streams(plan, concurrency).await?);
        }
        Cmd::Hold {
            url,
            connections,
            seconds,
        } => emit(&hold(&url, connections, seconds).await?),
        Cmd::Coldstart { url, command } => emit(&coldstart(&url, &command).await?),
    }
    Ok(())
}

struct StreamPlan {
    model: String,
    url: String,
    key: String,
    chunks: usize,
    delay: Duration,
    until: Instant,
    max_streams: usize,
}

#[derive(Default)]
struct StreamResults {
    ttfb_us: Vec<f64>,
    excess_us: Vec<f64>,
    streams: u64,
    errors: u64,
    incomplete: u64,
}

async fn run_streams(
    plan: StreamPlan,
    concurrency: usize,
) -> Result<serde_json::Value, reqwest::Error> {
    let client = client(concurrency)?;
    let plan = Arc::new(plan);
    let results = Arc::new(Mutex::new(StreamResults::default()));
    let body = json!({"model": plan.model, "stream": true,
                      "messages": [{"role": "user", "content": "benchmark stream"}]})
    .to_string();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, plan, results, body) =
            (client.clone(), plan.clone(), results.clone(), body.clone());
        workers.push(tokio::spawn(async move {
            let mut done = 0;
            while Instant::now() < plan.until && (plan.max_streams == 0 || done < plan.max_streams)
            {
                let outcome = one_stream(&client, &plan, &body).await;
                let mut results = results.lock().await;
                match outcome {
                    Ok((ttfb, excess, complete)) => {
                        results.streams += 1;
                        results.ttfb_us.push(ttfb);
                        results.excess_us.extend(excess);
                        if !complete {
                            results.incomplete += 1;
                        }
                    }
                    Err(_) => results.errors += 1,
                }
                done += 1;
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let results = results.lock().await;
    let late = results
        .excess_us
        .iter()
        .filter(|us| **us > 10_000.0)
        .count();
    Ok(json!({
        "streams": results.streams, "errors": results.errors, "incomplete": results.incomplete,
        "seconds": elapsed, "concurrency": concurrency,
        "ttfb_us": Summary::of(&results.ttfb_us).to_json(),
        "chunk_excess_us": Summary::of(&results.excess_us).to_json(),
        "chunks_late_over_10ms": late,
    }))
}

/// One stream: (time to first content byte in µs, each chunk's delay beyond pacing in µs, saw [DONE]).
async fn one_stream(
    client: &reqwest::Client,
    plan: &StreamPlan,
    body: &str,
) -> Result<(f64, Vec<f64>, bool), reqwest::Error> {
    let sent = Instant::now();
    let response = client
        .post(&plan.url)
        .bearer_auth(&plan.key)
        .header("content-type", "application/json")
        .header("x-mock-chunks", plan.chunks.to_string())
        .header("x-mock-chunk-delay-ms", plan.delay.as_millis().to_string())
        .body(body.to_owned())
        .send()
        .await?
        .error_for_status()?;
    let mut stream = response.bytes_stream();
    let mut ttfb = None;
    let mut last: Option<Instant> = None;
    let mut excess = Vec::with_capacity(plan.chunks);
    let mut tail = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let now = Instant::now();
        if ttfb.is_none() {
            ttfb = Some(now.duration_since(sent).as_secs_f64() * 1e6);
        }
        if let Some(previous) = last {
            let gap = now.duration_since(previous).as_secs_f64() * 1e6;
            let pacing = plan.delay.as_secs_f64() * 1e6;
            if gap > pacing / 2.0 {
                excess.push((gap - pacing).max(0.0));
            }
        }
        last = Some(now);
        tail.extend_from_slice(&chunk);
        if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
    }
    let complete = tail.windows(6).any(|w| w == b"[DONE]");
    Ok((ttfb.unwrap_or(0.0), excess, complete))
}

async fn hold(
    url: &str,
    connections: usize,
    seconds: f64,
) -> Result<serde_json::Value, reqwest::Error> {
    let client = client(connections)?;
    let opened = Arc::new(tokio::sync::Barrier::new(connections + 1));
    let release = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, opened, release, url) = (
            client.clone(),
            opened.clone(),
            release.clone(),
            url.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            // A slow request holds its connection open until the hold ends.
            let ok = client.get(&url).send().await.is_ok();
            opened.wait().await;
            release.notified().await;
            ok
        }));
    }
    opened.wait().await;
    emit(&json!({"ready": connections}));
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    release.notify_waiters();
    let mut ok = 0;
    for task in tasks {
        if task.await.unwrap_or(false) {
            ok += 1;
        }
    }
    Ok(json!({"connections": connections, "ok": ok}))
}

async fn coldstart(
    url: &str,
    command: &[String],
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let client = client(1)?;
    let (program, args) = command.split_first().ok_or("no command")?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut answered = None;
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(response) = client
            .get(url)
            .timeout(Duration::from_millis(200))
            .send()
            .await
            && response.status().is_success()
        {
            answered = Some(started.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    // SIGTERM, not SIGKILL: nginx's master must take its workers down with it.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    Ok(json!({"first_200_ms": answered}))
}
