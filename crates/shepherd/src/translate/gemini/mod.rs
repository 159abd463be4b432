//! The Gemini `generateContent` protocol, as the protocol of Gemini upstreams (requests encoded,
//! answers and streams decoded; embeddings through `batchEmbedContents`).

pub mod request;
pub mod response;
pub mod stream;
