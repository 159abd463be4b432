//! The OpenAI Chat Completions protocol (and legacy completions), as a client protocol and as the
//! protocol of OpenAI-compatible upstreams.

pub mod encode;
pub mod request;
pub mod response;
pub mod stream;
pub mod usage;
