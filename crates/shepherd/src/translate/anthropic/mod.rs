//! The Anthropic Messages protocol, as a client protocol (`/v1/messages`) and as the protocol of
//! Anthropic upstreams.

pub mod request;
pub mod response;
pub mod stream;
