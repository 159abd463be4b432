//! The config loader on any text: problems reported, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "SET").then(|| "value-from-env".to_owned());
    if let Ok(config) = shepherd::config::load_str(text, "fuzz.yaml", &env) {
        let _ = config.serves_nothing();
        let _ = shepherd::redact::Redactor::of_config(&config);
    }
});
