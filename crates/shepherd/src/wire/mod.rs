//! Wire formats of the client and upstream protocols, and the one SSE implementation.

pub mod base64;
pub mod openai;
pub mod sse;
