//! The SSE splitter and parser, and the pass-through watch of every grammar (OpenAI chunks,
//! Anthropic events, Responses API events), on arbitrary bytes cut into
//! arbitrary chunks: no panic, whole events only, and the bytes forwarded are the bytes given
//! (minus hidden usage chunks).
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shepherd::api::watch::Watch;
use shepherd::redact::Redactor;
use shepherd::translate::shapes::Grammar;
use shepherd::wire::sse::{EventSplitter, events};

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, stream)) = data.split_first() else {
        return;
    };
    let mut splitter = EventSplitter::with_limit(4096);
    let mut openai = Watch::new(Grammar::OpenAiChunks, cuts & 1 == 0, Arc::new(Redactor::new(["sk-secret-fuzz"])));
    let mut anthropic = Watch::new(Grammar::Anthropic, false, Arc::default());
    let mut responses = Watch::new(Grammar::Responses, false, Arc::new(Redactor::new(["sk-secret-fuzz"])));
    let step = usize::from(cuts % 17) + 1;
    let mut released = Vec::new();
    for chunk in stream.chunks(step) {
        match splitter.push(Bytes::copy_from_slice(chunk)) {
            Ok(Some(whole)) => {
                released.extend_from_slice(&whole);
                if let Ok(text) = std::str::from_utf8(&whole) {
                    for event in events(text) {
                        assert!(event.span.end <= text.len());
                    }
                }
                let _ = openai.watch(whole.clone());
                let _ = anthropic.watch(whole.clone());
                let _ = responses.watch(whole);
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
    if let Some(rest) = splitter.finish() {
        let _ = openai.watch(rest);
    }
    assert!(stream.starts_with(&released));
});
