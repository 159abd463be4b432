//! Client requests of every protocol decoded into the canonical form and encoded for every
//! upstream protocol, and the pass-through head parsed and rewritten: no panic on any body.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shepherd::translate::{anthropic, gemini, openai, responses};
use shepherd::wire::openai::RequestHead;

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = RequestHead::parse(data) {
        let body = Bytes::copy_from_slice(data);
        let _ = head.rewrite(&body, "upstream-model", true);
        let _ = RequestHead::with_model(&body, "default-model");
    }
    for decoded in [
        openai::request::decode_chat(data),
        openai::request::decode_completion(data),
        anthropic::request::decode(data),
        anthropic::request::decode_count(data),
        responses::request::decode(data),
    ] {
        let Ok(request) = decoded else { continue };
        let _ = openai::encode::encode_chat(&request);
        let _ = anthropic::request::encode(&request, 4096);
        let _ = gemini::request::encode(&request);
        let _ = shepherd::translate::tokens::count(&request, "gpt-4o");
    }
    let _ = gemini::request::encode_embeddings(data, "text-embedding-004");
});
