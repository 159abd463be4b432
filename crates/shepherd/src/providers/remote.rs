//! Upstreams reached over HTTP, in each one's protocol: OpenAI-compatible (`Authorization:
//! Bearer`), Anthropic (`x-api-key` + `anthropic-version`) and Gemini (`x-goog-api-key`, the model
//! in the URL). The body goes up as prepared and comes back as bytes.

use axum::http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use futures_util::StreamExt;
use http_body_util::{BodyDataStream, Full};

use super::http::UpstreamClient;
use super::{
    Operation, UpstreamError, UpstreamRequest, UpstreamResponse, forwardable_request_headers,
};
use crate::config::{RemoteProvider, Secret, Wire};

#[derive(Debug)]
pub struct Remote {
    wire: Wire,
    base_url: String,
    /// Full URL of each fixed endpoint, parsed once.
    urls: EndpointUrls,
    api_keys: Vec<Secret>,
    /// The credential header of each key, built once.
    auth: Vec<(HeaderName, HeaderValue)>,
    /// Configured extra headers, and the protocol's own (e.g. `anthropic-version`).
    extra_headers: Vec<(HeaderName, HeaderValue)>,
    version: String,
    default_max_tokens: u64,
    /// The upstream offers the Responses API.
    responses: bool,
    client: UpstreamClient,
}

impl Remote {
    pub fn new(config: &RemoteProvider, client: UpstreamClient) -> Result<Self, String> {
        let mut auth = Vec::with_capacity(config.api_keys.len());
        for key in &config.api_keys {
            let (name, text) = match config.wire {
                Wire::OpenAi => (header::AUTHORIZATION, format!("Bearer {}", key.expose())),
                Wire::Anthropic => (
                    HeaderName::from_static("x-api-key"),
                    key.expose().to_owned(),
                ),
                Wire::Gemini => (
                    HeaderName::from_static("x-goog-api-key"),
                    key.expose().to_owned(),
                ),
            };
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                "an upstream key holds characters not allowed in a header".to_owned()
            })?;
            value.set_sensitive(true);
            auth.push((name, value));
        }
        let mut extra_headers = Vec::with_capacity(config.headers.len() + 1);
        if config.wire == Wire::Anthropic {
            let version = HeaderValue::from_str(&config.version)
                .map_err(|_| format!("`{}` is not a valid anthropic-version", config.version))?;
            extra_headers.push((HeaderName::from_static("anthropic-version"), version));
        }
        for (name, value) in &config.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| format!("`{name}` is not a valid header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("the value of header `{name}` is not valid"))?;
            extra_headers.push((name, value));
        }
        Ok(Remote {
            wire: config.wire,
            base_url: config.base_url.clone(),
            urls: EndpointUrls::new(&config.base_url)?,
            api_keys: config.api_keys.clone(),
            auth,
            extra_headers,
            version: config.version.clone(),
            default_max_tokens: config.default_max_tokens,
            responses: config.responses,
            client,
        })
    }

    pub fn wire(&self) -> Wire {
        self.wire
    }

    pub fn default_max_tokens(&self) -> u64 {
        self.default_max_tokens
    }

    pub fn offers_responses(&self) -> bool {
        self.responses
    }

    pub fn secrets(&self) -> &[Secret] {
        &self.api_keys
    }

    /// The URL of an operation.
    fn uri(&self, request: &UpstreamRequest<'_>) -> Result<Uri, UpstreamError> {
        let fixed = match request.operation {
            Operation::ChatCompletions => &self.urls.chat_completions,
            Operation::Completions => &self.urls.completions,
            Operation::Embeddings => &self.urls.embeddings,
            Operation::Messages => &self.urls.messages,
            Operation::Responses => &self.urls.responses,
            Operation::CountTokens => &self.urls.count_tokens,
            Operation::GenerateContent | Operation::BatchEmbed | Operation::GeminiCountTokens => {
                let method = match (request.operation, request.stream) {
                    (Operation::BatchEmbed, _) => "batchEmbedContents",
                    (Operation::GeminiCountTokens, _) => "countTokens",
                    (_, true) => "streamGenerateContent?alt=sse",
                    (_, false) => "generateContent",
                };
                return format!(
                    "{}/{}/models/{}:{method}",
                    self.base_url,
                    self.version,
                    encode_path_segment(request.model)
                )
                .parse::<Uri>()
                .map_err(|error| UpstreamError::Transport(format!("bad upstream URL: {error}")));
            }
        };
        Ok(fixed.clone())
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub async fn send(
        &self,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let uri = self.uri(&request)?;
        let mut headers = forwardable_request_headers(request.client_headers, self.wire);
        for (name, value) in &self.extra_headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Some((name, value)) = request.key.and_then(|index| self.auth.get(index)) {
            headers.insert(name.clone(), value.clone());
        }
        if let Ok(id) = HeaderValue::from_str(request.request_id) {
            headers.insert(HeaderName::from_static("x-request-id"), id);
        }
        headers.insert(HOPS_HEADER, HeaderValue::from(request.hops));
        if let Some(traceparent) = request.traceparent {
            headers.insert(HeaderName::from_static("traceparent"), traceparent);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut outgoing = Request::new(Full::new(request.body));
        *outgoing.method_mut() = Method::POST;
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = headers;
        let response = self
            .client
            .request(outgoing)
            .await
            .map_err(|error| classify(&error))?;
        let (parts, body) = response.into_parts();
        let body = BodyDataStream::new(body)
            .map(|chunk| chunk.map_err(|error| UpstreamError::Transport(describe(&error))));
        Ok(UpstreamResponse {
            status: parts.status,
            headers: parts.headers,
            body: Box::pin(body),
        })
    }

    /// A health check: the provider's model list answers 2xx within `timeout` (with the first
    /// key).
    pub async fn check(&self, timeout: std::time::Duration) -> Result<(), String> {
        match self.models_status(0, timeout).await? {
            status if (200..300).contains(&status) => Ok(()),
            status => Err(format!("status {status}")),
        }
    }

    /// The status of the provider's model list asked with key `index` (no key: none sent).
    pub async fn models_status(
        &self,
        index: usize,
        timeout: std::time::Duration,
    ) -> Result<u16, String> {
        let path = match self.wire {
            Wire::OpenAi => "/models".to_owned(),
            Wire::Anthropic => "/v1/models".to_owned(),
            Wire::Gemini => format!("/{}/models", self.version),
        };
        let uri = format!("{}{path}", self.base_url)
            .parse::<Uri>()
            .map_err(|error| format!("bad health check URL: {error}"))?;
        let mut request = Request::new(Full::new(bytes::Bytes::new()));
        *request.method_mut() = Method::GET;
        *request.uri_mut() = uri;
        for (name, value) in &self.extra_headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        if let Some((name, value)) = self.auth.get(index) {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let response = tokio::time::timeout(timeout, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|error| describe(&error))?;
        Ok(response.status().as_u16())
    }
}

/// Gateways a request has passed, for loop protection.
pub const HOPS_HEADER: HeaderName = HeaderName::from_static("x-shepherd-hops");

/// A model name as one URL path segment (Gemini names are plain, but a config may hold anything).
fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The upstream URL of every fixed endpoint, so that no request parses a URL.
#[derive(Debug)]
struct EndpointUrls {
    chat_completions: Uri,
    completions: Uri,
    embeddings: Uri,
    messages: Uri,
    responses: Uri,
    count_tokens: Uri,
}

impl EndpointUrls {
    fn new(base_url: &str) -> Result<Self, String> {
        let parse = |path: &str| {
            format!("{base_url}{path}")
                .parse::<Uri>()
                .map_err(|error| format!("`{base_url}` is not a valid base URL: {error}"))
        };
        Ok(EndpointUrls {
            chat_completions: parse("/chat/completions")?,
            completions: parse("/completions")?,
            embeddings: parse("/embeddings")?,
            messages: parse("/v1/messages")?,
            responses: parse("/responses")?,
            count_tokens: parse("/v1/messages/count_tokens")?,
        })
    }
}

/// The innermost cause of an error, in words a client may read (no URL with secrets in it).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut detail = error.to_string();
    let mut source = error.source();
    while let Some(current) = source {
        detail = current.to_string();
        source = current.source();
    }
    detail.replace(|c: char| c.is_control(), " ")
}

/// A failed request: connect timeouts, refused connections and broken exchanges told apart.
fn classify(error: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return UpstreamError::Timeout(describe(error));
        }
        source = current.source();
    }
    if error.is_connect() {
        UpstreamError::Connect(describe(error))
    } else {
        UpstreamError::Transport(describe(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(encode_path_segment("gemini-2.5-flash"), "gemini-2.5-flash");
        assert_eq!(encode_path_segment("a/b c"), "a%2Fb%20c");
    }
}
