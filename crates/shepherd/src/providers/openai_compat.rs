//! Any OpenAI-compatible upstream (OpenAI, DeepSeek, Groq, vLLM, Ollama, relays): same protocol
//! in and out, so the body goes up as it came (model already rewritten) and comes back as bytes.

use axum::http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use futures_util::StreamExt;
use http_body_util::{BodyDataStream, Full};

use super::http::{self, UpstreamClient};
use super::{
    Endpoint, UpstreamError, UpstreamRequest, UpstreamResponse, forwardable_request_headers,
};
use crate::config::{Secret, Timeouts};

#[derive(Debug)]
pub struct OpenAiCompat {
    /// Full URL of each endpoint, parsed once.
    urls: EndpointUrls,
    api_keys: Vec<Secret>,
    /// `Authorization: Bearer …` for each key, built once.
    auth_values: Vec<HeaderValue>,
    extra_headers: Vec<(HeaderName, HeaderValue)>,
    client: UpstreamClient,
}

impl OpenAiCompat {
    pub fn new(
        base_url: &str,
        api_keys: &[Secret],
        headers: &[(String, String)],
        timeouts: &Timeouts,
    ) -> Result<Self, String> {
        let mut auth_values = Vec::with_capacity(api_keys.len());
        for key in api_keys {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                    "an upstream key holds characters not allowed in a header".to_owned()
                })?;
            value.set_sensitive(true);
            auth_values.push(value);
        }
        let mut extra_headers = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| format!("`{name}` is not a valid header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("the value of header `{name}` is not valid"))?;
            extra_headers.push((name, value));
        }
        Ok(OpenAiCompat {
            urls: EndpointUrls::new(base_url)?,
            api_keys: api_keys.to_vec(),
            auth_values,
            extra_headers,
            client: http::build_client(timeouts)?,
        })
    }

    pub fn secrets(&self) -> &[Secret] {
        &self.api_keys
    }

    pub async fn send(
        &self,
        request: UpstreamRequest<'_>,
        sequence: u64,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut headers = forwardable_request_headers(request.client_headers);
        for (name, value) in &self.extra_headers {
            headers.insert(name.clone(), value.clone());
        }
        if !self.auth_values.is_empty() {
            let index = usize::try_from(sequence % self.auth_values.len() as u64).unwrap_or(0);
            headers.insert(header::AUTHORIZATION, self.auth_values[index].clone());
        }
        if let Ok(id) = HeaderValue::from_str(request.request_id) {
            headers.insert(HeaderName::from_static("x-request-id"), id);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut outgoing = Request::new(Full::new(request.body));
        *outgoing.method_mut() = Method::POST;
        *outgoing.uri_mut() = self.urls.get(request.endpoint).clone();
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
}

/// The upstream URL of every endpoint, so that no request parses a URL.
#[derive(Debug)]
struct EndpointUrls {
    chat_completions: Uri,
    completions: Uri,
    embeddings: Uri,
}

impl EndpointUrls {
    fn new(base_url: &str) -> Result<Self, String> {
        let parse = |endpoint: Endpoint| {
            format!("{base_url}{}", endpoint.path())
                .parse::<Uri>()
                .map_err(|error| format!("`{base_url}` is not a valid base URL: {error}"))
        };
        Ok(EndpointUrls {
            chat_completions: parse(Endpoint::ChatCompletions)?,
            completions: parse(Endpoint::Completions)?,
            embeddings: parse(Endpoint::Embeddings)?,
        })
    }

    fn get(&self, endpoint: Endpoint) -> &Uri {
        match endpoint {
            Endpoint::ChatCompletions => &self.chat_completions,
            Endpoint::Completions => &self.completions,
            Endpoint::Embeddings => &self.embeddings,
        }
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
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return UpstreamError::Timeout(describe(error));
            }
        }
        source = current.source();
    }
    if error.is_connect() {
        UpstreamError::Connect(describe(error))
    } else {
        UpstreamError::Transport(describe(error))
    }
}
