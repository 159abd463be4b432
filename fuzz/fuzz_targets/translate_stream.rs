//! Upstream stream events of every protocol decoded one by one and encoded for every client
//! shape (Responses API included): no panic, whatever the events hold and in whatever order.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shepherd::translate::anthropic::stream::{MessagesDecoder, MessagesEncoder};
use shepherd::translate::gemini::stream::GenerateDecoder;
use shepherd::translate::openai::response::Envelope;
use shepherd::translate::openai::stream::{ChatDecoder, ChatEncoder, ChunkKind};
use shepherd::translate::responses::response::{Echo, Envelope as ResponseEnvelope};
use shepherd::translate::responses::stream::ResponsesEncoder;
use shepherd::translate::stream::{Decoder, Encoder};
use shepherd::wire::sse::events;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let decoders: [Box<dyn Decoder>; 3] = [
        Box::<ChatDecoder>::default(),
        Box::<MessagesDecoder>::default(),
        Box::<GenerateDecoder>::default(),
    ];
    for mut decoder in decoders {
        let envelope = Envelope {
            id: "chatcmpl-fuzz".into(),
            model: "m".into(),
            created: 1,
        };
        let response = ResponseEnvelope {
            id: "resp_fuzz".into(),
            model: "m".into(),
            created: 1,
            echo: Echo::new(),
        };
        let mut encoders: [Box<dyn Encoder>; 4] = [
            Box::new(ChatEncoder::new(envelope.clone(), ChunkKind::Chat, true)),
            Box::new(ChatEncoder::new(envelope, ChunkKind::Completion, false)),
            Box::new(MessagesEncoder::new("msg_fuzz".into(), "m".into())),
            Box::new(ResponsesEncoder::new(response)),
        ];
        let mut out = BytesMut::new();
        let mut decoded = Vec::new();
        for event in events(text) {
            if decoder.decode(event, &mut decoded).is_err() {
                break;
            }
            for event in decoded.drain(..) {
                for encoder in &mut encoders {
                    encoder.encode(event.clone(), &mut out);
                }
            }
        }
        for encoder in &mut encoders {
            let (usage, _) = encoder.usage();
            encoder.finish(&usage.unwrap_or_default(), &mut out);
        }
    }
});
