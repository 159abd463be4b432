//! Upstream answers of every protocol (and Responses API objects, read back from the cache or a
//! pass-through) decoded into the canonical form and encoded for every client shape: no panic on
//! any JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shepherd::translate::ir::Usage;
use shepherd::translate::openai::response::Envelope;
use shepherd::translate::{anthropic, gemini, openai, responses};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let envelope = Envelope {
        id: "chatcmpl-fuzz".into(),
        model: "m".into(),
        created: 1,
    };
    for decoded in [
        openai::response::decode_chat(&value),
        anthropic::response::decode(&value),
        gemini::response::decode(&value),
        responses::response::decode(&value),
    ] {
        let Ok(answer) = decoded else { continue };
        let usage = answer.usage.unwrap_or_default();
        let _ = openai::response::encode_chat(&answer, &envelope, &usage);
        let _ = openai::response::encode_completion(&answer, &envelope, &Usage::default());
        let _ = anthropic::response::encode(&answer, "msg_fuzz", "m", &usage);
        let echo = responses::response::echo_of(&value);
        let object = responses::response::Envelope {
            id: "resp_fuzz".into(),
            model: "m".into(),
            created: 1,
            echo,
        };
        let _ = responses::response::encode(&answer, &object, &usage);
    }
    let _ = responses::response::usage_of(&value["usage"]);
    let _ = gemini::response::decode_embeddings(&value, "m", true, 3);
});
