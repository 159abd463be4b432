//! Plain request load: a closed loop (N connections, each sending its next request when the last
//! answer is in) and an open loop (requests started on a fixed schedule, latency measured from
//! the scheduled start so that a stalled server cannot hide its queue).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{Mutex, Semaphore};

use crate::stats::Summary;

pub struct Plan {
    pub url: String,
    pub key: String,
    pub body: String,
    pub duration: Duration,
    /// Closed loop: total requests to send (0: until `duration` is over).
    pub requests: u64,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<f64>,
    ok: u64,
    errors: u64,
}

impl Tally {
    fn record(&mut self, started: Instant, outcome: Result<bool, reqwest::Error>) {
        self.latencies_us
            .push(started.elapsed().as_secs_f64() * 1e6);
        match outcome {
            Ok(true) => self.ok += 1,
            _ => self.errors += 1,
        }
    }
}

/// Sends one request and reads the whole answer; `Ok(true)` for a 200.
async fn one(client: &reqwest::Client, plan: &Plan) -> Result<bool, reqwest::Error> {
    let response = client
        .post(&plan.url)
        .bearer_auth(&plan.key)
        .header("content-type", "application/json")
        .body(plan.body.clone())
        .send()
        .await?;
    let ok = response.status().is_success();
    response.bytes().await?;
    Ok(ok)
}

fn report(tally: &Tally, elapsed: Duration) -> serde_json::Value {
    let summary = Summary::of(&tally.latencies_us);
    let total = tally.ok + tally.errors;
    json!({
        "requests": total, "ok": tally.ok, "errors": tally.errors,
        "seconds": elapsed.as_secs_f64(),
        "rps": total as f64 / elapsed.as_secs_f64().max(1e-9),
        "p50_us": summary.p50, "p99_us": summary.p99, "max_us": summary.max,
    })
}

pub async fn closed_loop(
    client: reqwest::Client,
    plan: Plan,
    concurrency: usize,
) -> serde_json::Value {
    let plan = Arc::new(plan);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + plan.duration;
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, plan, tally, sent) =
            (client.clone(), plan.clone(), tally.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let mut local = Tally::default();
            loop {
                if plan.requests > 0 {
                    if sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= plan.requests {
                        break;
                    }
                } else if Instant::now() >= deadline {
                    break;
                }
                let start = Instant::now();
                let outcome = one(&client, &plan).await;
                local.record(start, outcome);
            }
            let mut tally = tally.lock().await;
            tally.latencies_us.extend(local.latencies_us);
            tally.ok += local.ok;
            tally.errors += local.errors;
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = started.elapsed();
    let tally = tally.lock().await;
    report(&tally, elapsed)
}

pub async fn open_loop(
    client: reqwest::Client,
    plan: Plan,
    rate: f64,
    max_in_flight: usize,
) -> serde_json::Value {
    let plan = Arc::new(plan);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let in_flight = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let started = Instant::now();
    let total = (plan.duration.as_secs_f64() * rate).round() as u64;
    let mut tasks = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for n in 0..total {
        let scheduled = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, plan, tally, in_flight) = (
            client.clone(),
            plan.clone(),
            tally.clone(),
            in_flight.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Past `max_in_flight` requests, the wait for a slot counts as latency too.
            let outcome = match in_flight.acquire().await {
                Ok(_permit) => one(&client, &plan).await,
                Err(_) => Ok(false),
            };
            tally.lock().await.record(scheduled, outcome);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed();
    let tally = tally.lock().await;
    report(&tally, elapsed)
}
