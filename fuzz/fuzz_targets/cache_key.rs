//! The canonical cache key on any body: no panic, and the same key for the same JSON written
//! with other spacing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shepherd::cache::key;

fuzz_target!(|data: &[u8]| {
    let _ = key::of("/v1/chat/completions", "shared", data);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let compact = serde_json::to_vec(&value).unwrap_or_default();
        let pretty = serde_json::to_vec_pretty(&value).unwrap_or_default();
        assert_eq!(
            key::of("/v1/chat/completions", "shared", &compact),
            key::of("/v1/chat/completions", "shared", &pretty)
        );
    }
});
