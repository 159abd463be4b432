//! Planning one upstream exchange: which operation to call and with which body, and how its
//! answer reaches the client. Same protocol in and out: the body passes with the model rewritten
//! (and, for OpenAI streams, usage asked for). Different protocols: the request is decoded into
//! the canonical form and encoded for the upstream, and the answer is translated back.

use bytes::Bytes;
use serde::Deserialize;

use super::errors::ApiError;
use crate::config::Wire;
use crate::providers::{Endpoint, Operation};
use crate::routing::Deployment;
use crate::translate::ir::{self, Part, Request};
use crate::translate::responses::response::Keeper;
use crate::translate::shapes::Echo;
use crate::translate::{self, TranslateError, gemini, shapes};
use crate::wire::openai::RequestHead;

/// What to send upstream, and how the answer comes back.
#[derive(Debug)]
pub struct Exchange {
    pub operation: Operation,
    pub body: Bytes,
    pub conversion: Conversion,
    /// Prompt tokens as estimated by the gateway, for when the upstream reports none.
    pub prompt_estimate: u64,
    /// Fields of the client's request the upstream's protocol has no place for (answered in
    /// `x-shepherd-dropped`).
    pub dropped: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Conversion {
    /// Same shape: bytes pass; usage is read on the side.
    Passthrough {
        wire: Wire,
        /// The client's route (and so the shape of the bytes).
        endpoint: Endpoint,
        /// The gateway asked an OpenAI upstream for the usage chunk the client did not want.
        hide_usage_chunk: bool,
        /// Keeps the finished response (Responses API with `store`).
        keeper: Option<std::sync::Arc<dyn Keeper>>,
    },
    /// Different protocols: the answer is decoded from `upstream` and encoded for `endpoint`.
    Translate(Translation),
}

#[derive(Debug, Clone)]
pub struct Translation {
    /// The client's route (and so its protocol).
    pub endpoint: Endpoint,
    pub upstream: Wire,
    /// An OpenAI client asked for the usage chunk of its stream.
    pub include_usage: bool,
    /// The model shown when the upstream names none.
    pub model: String,
    /// Embeddings answered by Gemini: base64 asked, and the token estimate.
    pub embeddings_base64: bool,
    /// What the answer repeats of the request (Responses API).
    pub echo: Echo,
}

/// Plans the exchange of a request with `deployment`.
pub fn plan(
    endpoint: Endpoint,
    head: &RequestHead,
    body: &Bytes,
    deployment: &Deployment,
    stream: bool,
    echo: &Echo,
) -> Result<Exchange, ApiError> {
    let upstream = deployment.provider.wire();
    let model = &*deployment.upstream_model;
    if endpoint.passthrough() == Some(upstream) && deployment.provider.offers(endpoint) {
        let shape = endpoint.shape();
        // Embeddings have no shape of their own here: OpenAI's.
        let operation = shape.map_or(Operation::Embeddings, |shape| shape.passthrough_operation());
        let ask_usage = shape.is_some_and(|shape| shape.usage_on_request());
        return Ok(Exchange {
            operation,
            body: head.rewrite(body, model, ask_usage),
            conversion: Conversion::Passthrough {
                wire: upstream,
                endpoint,
                hide_usage_chunk: ask_usage && stream && !head.include_usage,
                keeper: echo.keeper.clone(),
            },
            prompt_estimate: ir::estimate_tokens(body.len()),
            dropped: Vec::new(),
        });
    }
    let mut dropped = translate::fields::check(endpoint, upstream, body)
        .map_err(|error| untranslatable(&error))?;
    let translation = Translation {
        endpoint,
        upstream,
        include_usage: head.include_usage,
        model: model.to_owned(),
        embeddings_base64: false,
        echo: echo.clone(),
    };
    let Some(shape) = endpoint.shape() else {
        return plan_embeddings(body, deployment, translation, dropped);
    };
    let mut request = shape
        .decode_request(body)
        .map_err(|error| untranslatable(&error))?;
    request.model = model.to_owned();
    request.stream = stream;
    translate::fields::nested_drops(&request, upstream, &mut dropped);
    let (operation, encoded) =
        shapes::upstream_request(upstream, &request, deployment.provider.default_max_tokens())
            .map_err(|error| untranslatable(&error))?;
    Ok(Exchange {
        operation,
        body: Bytes::from(encoded.to_string()),
        conversion: Conversion::Translate(translation),
        prompt_estimate: prompt_estimate(&request),
        dropped,
    })
}

fn plan_embeddings(
    body: &Bytes,
    deployment: &Deployment,
    mut translation: Translation,
    dropped: Vec<String>,
) -> Result<Exchange, ApiError> {
    if translation.upstream != Wire::Gemini {
        return Err(ApiError::unsupported(format!(
            "The model is served by `{}`, a {} provider, which has no embeddings.",
            deployment.provider.name,
            translation.upstream.as_str()
        )));
    }
    #[derive(Deserialize)]
    struct Format {
        encoding_format: Option<String>,
    }
    let format: Format = translate::parse_body(body).map_err(|error| untranslatable(&error))?;
    translation.embeddings_base64 = format.encoding_format.as_deref() == Some("base64");
    let (encoded, inputs) = gemini::request::encode_embeddings(body, &deployment.upstream_model)
        .map_err(|error| untranslatable(&error))?;
    let chars: usize = inputs.iter().map(String::len).sum();
    Ok(Exchange {
        operation: Operation::BatchEmbed,
        body: Bytes::from(encoded.to_string()),
        conversion: Conversion::Translate(translation),
        prompt_estimate: ir::estimate_tokens(chars),
        dropped,
    })
}

fn untranslatable(error: &TranslateError) -> ApiError {
    ApiError::untranslatable(error.field.as_deref(), &error.message)
}

/// Prompt tokens of a canonical request: its text, about four characters a token, plus a few
/// tokens of framing per message.
fn prompt_estimate(request: &Request) -> u64 {
    let mut chars = request.system.as_ref().map_or(0, String::len);
    for message in &request.messages {
        chars += 16;
        for part in &message.parts {
            chars += match part {
                Part::Text(text) => text.len(),
                Part::ToolCall(call) => call.name.len() + call.arguments.len(),
                Part::ToolResult(result) => translate::openai::encode::result_text(result).len(),
                Part::Thinking { text, .. } => text.len(),
                Part::Image(_) | Part::Document(_) => 1000,
                Part::RedactedThinking(data) => data.len() / 4,
            };
        }
    }
    for tool in &request.tools {
        chars += tool.name.len() + tool.parameters.to_string().len();
    }
    ir::estimate_tokens(chars)
}
