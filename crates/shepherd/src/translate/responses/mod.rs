//! OpenAI's Responses API (`POST /v1/responses`) as a client shape: requests (`input` items,
//! `instructions`, function tools, `text.format`, `reasoning`) decoded into the canonical form,
//! and canonical answers and stream events encoded as a `response` object and its typed,
//! numbered stream events. Upstreams are reached through their own shapes (chat completions,
//! messages, generateContent), so a Responses client can use any model.

pub mod request;
pub mod response;
pub mod stream;
