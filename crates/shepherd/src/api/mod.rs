//! Client-facing handlers, one file per protocol, and what they share: authentication, body
//! reading, the proxy path, stream relaying and errors in the caller's shape.

pub mod auth;
mod body;
pub mod errors;
pub mod health;
pub mod openai;
mod proxy;
mod relay;

pub use proxy::DEPLOYMENT_HEADER;
