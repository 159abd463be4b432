//! `AppState`: everything a handler needs, built once from a validated config, behind one `Arc`.

use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::api::auth::KeyTable;
use crate::config::Config;
use crate::routing::ModelTable;

#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub models: ModelTable,
    pub keys: KeyTable,
    /// Set on SIGTERM: `/readyz` answers 503 while in-flight work drains.
    pub draining: AtomicBool,
    /// Unix time the config was loaded (the `created` of `/v1/models` entries).
    pub loaded_at: u64,
}

impl AppState {
    pub fn new(config: Config) -> Result<Self, String> {
        let models = ModelTable::new(&config)?;
        let keys = KeyTable::new(&config.keys);
        Ok(AppState {
            config,
            models,
            keys,
            draining: AtomicBool::new(false),
            loaded_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }
}
