//! The bad-input matrix: malformed, absurd and hostile requests to both client protocols and the
//! admin API, each answered with its status and an error in the caller's shape, none reaching
//! an upstream, none costing quota, and the process serving on afterwards.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;
use crate::governance::{MASTER_KEY, gov};

/// The error shape a case must answer in.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// OpenAI's `{"error":{message,type,param,code}}` with this code (`""`: `null`, as OpenAI
    /// answers a body that is not JSON).
    OpenAi(&'static str),
    /// Anthropic's `{"type":"error","error":{type,message}}` with this type.
    Anthropic(&'static str),
}

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    /// `None`: no credentials.
    key: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    shape: Shape,
}

fn case(
    name: &'static str,
    path: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
    shape: Shape,
) -> Case {
    Case {
        name,
        method: Method::POST,
        path: path.to_owned(),
        key: Some(CLIENT_KEY),
        headers: Vec::new(),
        body: body.into(),
        status,
        shape,
    }
}

impl Case {
    fn key(mut self, key: Option<&'static str>) -> Self {
        self.key = key;
        self
    }
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
    fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }
}

const CHAT: &str = "/v1/chat/completions";
const MESSAGES: &str = "/v1/messages";

fn chat(body: Value) -> Vec<u8> {
    body.to_string().into_bytes()
}

fn openai_cases() -> Vec<Case> {
    use Shape::OpenAi as O;
    let hi = json!([{"role": "user", "content": "hi"}]);
    let nested = format!(
        "{{\"model\":\"gpt-4.1\",\"x\":{}{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    vec![
        case("not JSON", CHAT, "{not json", 400, O("invalid_json")),
        case("a JSON array", CHAT, "[1,2]", 400, O("invalid_json")),
        case("an empty body", CHAT, "", 400, O("invalid_json")),
        case(
            "invalid UTF-8",
            CHAT,
            b"{\"model\":\"\xff\xfe\"}".to_vec(),
            400,
            O("invalid_json"),
        ),
        case("nested 5,000 deep", CHAT, nested, 400, O("invalid_json")),
        case(
            "no model",
            CHAT,
            chat(json!({"messages": hi})),
            400,
            O("missing_required_parameter"),
        ),
        case(
            "model a number",
            CHAT,
            chat(json!({"model": 5, "messages": hi})),
            400,
            O("invalid_type"),
        ),
        case(
            "model empty",
            CHAT,
            chat(json!({"model": "", "messages": hi})),
            400,
            O("invalid_type"),
        ),
        case(
            "model twice",
            CHAT,
            "{\"model\":\"gpt-4.1\",\"model\":\"x\",\"messages\":[]}",
            400,
            O("invalid_type"),
        ),
        case(
            "stream a string",
            CHAT,
            chat(json!({"model": "gpt-4.1", "stream": "yes", "messages": hi})),
            400,
            O("invalid_type"),
        ),
        case(
            "stream_options a string",
            CHAT,
            chat(
                json!({"model": "gpt-4.1", "stream": true, "stream_options": "x", "messages": hi}),
            ),
            400,
            O("invalid_type"),
        ),
        case(
            "max_tokens u64::MAX",
            CHAT,
            chat(json!({"model": "gpt-4.1", "max_tokens": u64::MAX, "messages": hi})),
            400,
            O("invalid_type"),
        ),
        case(
            "max_tokens 2^63",
            CHAT,
            chat(
                json!({"model": "gpt-4.1", "max_tokens": 9_223_372_036_854_775_808u64, "messages": hi}),
            ),
            400,
            O("invalid_type"),
        ),
        case(
            "max_tokens negative",
            CHAT,
            chat(json!({"model": "gpt-4.1", "max_tokens": -1, "messages": hi})),
            400,
            O("invalid_type"),
        ),
        case(
            "max_tokens fractional",
            CHAT,
            chat(json!({"model": "gpt-4.1", "max_tokens": 1.5, "messages": hi})),
            400,
            O("invalid_type"),
        ),
        case(
            "max_tokens zero",
            CHAT,
            chat(json!({"model": "gpt-4.1", "max_tokens": 0, "messages": hi})),
            400,
            O("invalid_type"),
        ),
        case(
            "max_completion_tokens text",
            CHAT,
            chat(json!({"model": "gpt-4.1", "max_completion_tokens": "ten", "messages": hi})),
            400,
            O("invalid_type"),
        ),
        case(
            "unknown model",
            CHAT,
            chat(json!({"model": "nope", "messages": hi})),
            404,
            O("model_not_found"),
        ),
        case(
            "model not allowed",
            CHAT,
            chat(json!({"model": "gpt-4.1", "messages": hi})),
            403,
            O("model_not_allowed"),
        )
        .key(Some(LIMITED_KEY)),
        case(
            "no key",
            CHAT,
            chat(json!({"model": "gpt-4.1", "messages": hi})),
            401,
            O("missing_api_key"),
        )
        .key(None),
        case(
            "wrong key",
            CHAT,
            chat(json!({"model": "gpt-4.1", "messages": hi})),
            401,
            O("invalid_api_key"),
        )
        .key(Some("sk-not-a-key-000000")),
        case(
            "body over max_body",
            CHAT,
            vec![b' '; 70 * 1024],
            413,
            O("request_too_large"),
        ),
        case(
            "cache TTL in the far future",
            CHAT,
            chat(json!({"model": "cached-gpt", "messages": hi})),
            400,
            O("invalid_header"),
        )
        .header("x-shepherd-cache-ttl", "300000000000y"),
        case(
            "cache TTL not a duration",
            CHAT,
            chat(json!({"model": "cached-gpt", "messages": hi})),
            400,
            O("invalid_header"),
        )
        .header("x-shepherd-cache-ttl", "soon"),
        case(
            "hops not a number",
            CHAT,
            chat(json!({"model": "gpt-4.1", "messages": hi})),
            400,
            O("invalid_type"),
        )
        .header("x-shepherd-hops", "x"),
        case(
            "hops past the limit",
            CHAT,
            chat(json!({"model": "gpt-4.1", "messages": hi})),
            508,
            O("loop_detected"),
        )
        .header("x-shepherd-hops", "99"),
        case(
            "GET on a POST route",
            CHAT,
            "",
            405,
            O("method_not_allowed"),
        )
        .method(Method::GET),
        case(
            "unknown route",
            "/v1/nothing-here",
            "{}",
            404,
            O("unknown_url"),
        ),
        case(
            "translated: bad role",
            CHAT,
            chat(json!({"model": "claude-x", "messages": [{"role": "robot", "content": "x"}]})),
            400,
            O("invalid_request"),
        ),
        case(
            "translated: messages not a list",
            CHAT,
            chat(json!({"model": "claude-x", "messages": "hi"})),
            400,
            O("invalid_request"),
        ),
        case(
            "translated: bad tool_choice",
            CHAT,
            chat(json!({"model": "gemini-x", "tool_choice": "sometimes", "messages": hi})),
            400,
            O("invalid_request"),
        ),
        case(
            "translated: legacy functions",
            CHAT,
            chat(json!({"model": "gemini-x", "functions": [{"name": "f"}], "messages": hi})),
            400,
            O("invalid_request"),
        ),
        case(
            "translated: audio output",
            CHAT,
            chat(json!({"model": "claude-x", "audio": {"voice": "x"}, "messages": hi})),
            400,
            O("invalid_request"),
        ),
        case(
            "translated: image URL scheme",
            CHAT,
            chat(
                json!({"model": "claude-x", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}),
            ),
            400,
            O("invalid_request"),
        ),
        case(
            "translated: tool arguments not JSON",
            CHAT,
            chat(
                json!({"model": "claude-x", "messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{nope"}}]}]}),
            ),
            400,
            O("invalid_request"),
        ),
        case(
            "translated: n = 2 to Anthropic",
            CHAT,
            chat(json!({"model": "claude-x", "n": 2, "messages": hi})),
            400,
            O("invalid_request"),
        ),
        case(
            "translated: orphan tool result to Gemini",
            CHAT,
            chat(
                json!({"model": "gemini-x", "messages": [{"role": "tool", "tool_call_id": "none", "content": "x"}]}),
            ),
            400,
            O("invalid_request"),
        ),
        case(
            "completions: two prompts to Anthropic",
            "/v1/completions",
            chat(json!({"model": "claude-x", "prompt": ["a", "b"]})),
            400,
            O("invalid_request"),
        ),
        case(
            "completions: suffix to Gemini",
            "/v1/completions",
            chat(json!({"model": "gemini-x", "prompt": "a", "suffix": "b"})),
            400,
            O("invalid_request"),
        ),
        case(
            "embeddings: token ids to Gemini",
            "/v1/embeddings",
            chat(json!({"model": "gemini-embed", "input": [1, 2, 3]})),
            400,
            O("invalid_request"),
        ),
        case(
            "embeddings: Anthropic has none",
            "/v1/embeddings",
            chat(json!({"model": "claude-x", "input": "x"})),
            400,
            O("unsupported_for_provider"),
        ),
        case(
            "models: unknown id",
            "/v1/models/nope",
            "",
            404,
            O("model_not_found"),
        )
        .method(Method::GET),
    ]
}

fn anthropic_cases() -> Vec<Case> {
    use Shape::Anthropic as A;
    let hi = json!([{"role": "user", "content": "hi"}]);
    let anthropic = |c: Case| c.header("anthropic-version", "2023-06-01");
    vec![
        case("not JSON", MESSAGES, "{nope", 400, A("invalid_request_error")),
        case("no model", MESSAGES, chat(json!({"max_tokens": 5, "messages": hi})), 400, A("invalid_request_error")),
        case("translated: no max_tokens", MESSAGES, chat(json!({"model": "gpt-4.1", "messages": hi})), 400, A("invalid_request_error")),
        case("max_tokens u64::MAX", MESSAGES, chat(json!({"model": "claude-x", "max_tokens": u64::MAX, "messages": hi})), 400, A("invalid_request_error")),
        case("unknown model", MESSAGES, chat(json!({"model": "nope", "max_tokens": 5, "messages": hi})), 404, A("not_found_error")),
        case("no key", MESSAGES, chat(json!({"model": "claude-x", "max_tokens": 5, "messages": hi})), 401, A("authentication_error")).key(None),
        case("model not allowed", MESSAGES, chat(json!({"model": "claude-x", "max_tokens": 5, "messages": hi})), 403, A("permission_error")).key(Some(LIMITED_KEY)),
        case("translated: messages a number", MESSAGES, chat(json!({"model": "gpt-4.1", "max_tokens": 5, "messages": 3})), 400, A("invalid_request_error")),
        case("translated: server tool", MESSAGES, chat(json!({"model": "gpt-4.1", "max_tokens": 5, "messages": hi, "tools": [{"type": "web_search_20250305", "name": "w"}]})), 400, A("invalid_request_error")),
        case("translated: MCP servers", MESSAGES, chat(json!({"model": "gemini-x", "max_tokens": 5, "messages": hi, "mcp_servers": [{"url": "x"}]})), 400, A("invalid_request_error")),
        case("body over max_body", MESSAGES, vec![b' '; 70 * 1024], 413, A("request_too_large")),
        case("GET on a POST route", MESSAGES, "", 405, A("invalid_request_error")).method(Method::GET),
        case("count_tokens: not JSON", "/v1/messages/count_tokens", "[", 400, A("invalid_request_error")),
        case("count_tokens: unknown model", "/v1/messages/count_tokens", chat(json!({"model": "nope", "messages": hi})), 404, A("not_found_error")),
        case("models: bad limit", "/v1/models?limit=abc", "", 400, A("invalid_request_error")).method(Method::GET),
        case("models: limit 0", "/v1/models?limit=0", "", 400, A("invalid_request_error")).method(Method::GET),
        case("models: unknown after_id", "/v1/models?after_id=nope", "", 400, A("invalid_request_error")).method(Method::GET),
    ]
    .into_iter()
    .map(anthropic)
    .collect()
}

async fn run(client: &reqwest::Client, base: &str, case: &Case) {
    let mut request = client.request(case.method.clone(), format!("{base}{}", case.path));
    if let Some(key) = case.key {
        request = request.bearer_auth(key);
    }
    for (name, value) in &case.headers {
        request = request.header(*name, value);
    }
    if !case.body.is_empty() || case.method == Method::POST {
        request = request
            .header("content-type", "application/json")
            .body(case.body.clone());
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("{}: no answer: {error}", case.name));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, case.status, "{}: {text}", case.name);
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{}: not JSON: {text}", case.name));
    match case.shape {
        Shape::OpenAi(code) => {
            let error = &body["error"];
            let expected = if code.is_empty() {
                Value::Null
            } else {
                json!(code)
            };
            assert_eq!(error["code"], expected, "{}: {body}", case.name);
            for field in ["message", "type"] {
                assert!(error[field].is_string(), "{}: {body}", case.name);
            }
            assert!(error.get("param").is_some(), "{}: {body}", case.name);
        }
        Shape::Anthropic(kind) => {
            assert_eq!(body["type"], "error", "{}: {body}", case.name);
            assert_eq!(body["error"]["type"], kind, "{}: {body}", case.name);
            assert!(
                body["error"]["message"].is_string(),
                "{}: {body}",
                case.name
            );
        }
    }
}

#[tokio::test]
async fn bad_requests_to_both_protocols_get_the_right_error_and_cost_nothing() {
    let h = start_with(
        "  client_timeouts: {body: 5s}
",
    )
    .await;
    let base = format!("http://{}", h.server.addr);
    let mut cases = openai_cases();
    cases.extend(anthropic_cases());
    assert!(cases.len() >= 55, "{} cases", cases.len());
    for case in &cases {
        run(&h.client, &base, case).await;
    }
    assert!(
        h.mock.requests().is_empty(),
        "a bad request reached the upstream: {:?}",
        h.mock
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
    // Still serving.
    let alive = h.client.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), 200);
    let served = h
        .chat(json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "still here"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
}

#[tokio::test]
async fn bad_admin_requests_get_json_errors_and_never_brick_the_key_list() {
    let g = gov("  - {name: svc, key: sk-svc-key-1}", "").await;
    let base = g.url("");
    let admin = |c: Case| c.key(Some(MASTER_KEY));
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(3 * 1024 * 1024));
    use Shape::OpenAi as O;
    let cases: Vec<Case> = vec![
        case(
            "no master key",
            "/admin/keys",
            "{}",
            401,
            O("missing_api_key"),
        )
        .key(None),
        case(
            "a client key",
            "/admin/keys",
            "{}",
            401,
            O("invalid_api_key"),
        )
        .key(Some("sk-svc-key-1")),
        admin(case(
            "not JSON",
            "/admin/keys",
            "{nope",
            400,
            O("invalid_request"),
        )),
        admin(case(
            "no name",
            "/admin/keys",
            chat(json!({"models": ["m"]})),
            400,
            O("invalid_request"),
        )),
        admin(case(
            "name a number",
            "/admin/keys",
            chat(json!({"name": 5})),
            400,
            O("invalid_request"),
        )),
        admin(case(
            "rpm zero",
            "/admin/keys",
            chat(json!({"name": "a", "limits": {"rpm": 0}})),
            400,
            O("invalid_request"),
        )),
        admin(case(
            "a two-star pattern",
            "/admin/keys",
            chat(json!({"name": "a", "models": ["*a*"]})),
            400,
            O("invalid_request"),
        )),
        admin(case(
            "expires_in 20000y",
            "/admin/keys",
            chat(json!({"name": "a", "expires_in": "20000y"})),
            400,
            O("invalid_request"),
        )),
        admin(case(
            "expires_in i64::MAX s",
            "/admin/keys",
            chat(json!({"name": "a", "expires_in": "9223372036854775807s"})),
            400,
            O("invalid_request"),
        )),
        admin(case(
            "expires_at year 9999999",
            "/admin/keys",
            chat(json!({"name": "a", "expires_at": "9999999-01-01T00:00:00Z"})),
            400,
            O("invalid_request"),
        )),
        admin(case(
            "budget negative",
            "/admin/keys",
            chat(json!({"name": "a", "budget": {"usd": -5}})),
            400,
            O("invalid_request"),
        )),
        admin(case(
            "budget period unknown",
            "/admin/keys",
            chat(json!({"name": "a", "budget": {"usd": 5, "period": "decade"}})),
            400,
            O("invalid_request"),
        )),
        admin(case(
            "body over 2 MiB",
            "/admin/keys",
            big,
            413,
            O("request_too_large"),
        )),
        admin(
            case(
                "unknown key",
                "/admin/keys/nope",
                chat(json!({"name": "x"})),
                404,
                O("not_found"),
            )
            .method(Method::PATCH),
        ),
        admin(
            case(
                "revoke unknown",
                "/admin/keys/nope",
                "",
                404,
                O("not_found"),
            )
            .method(Method::DELETE),
        ),
        admin(case(
            "rotate unknown",
            "/admin/keys/nope/rotate",
            "{}",
            404,
            O("not_found"),
        )),
        admin(
            case(
                "usage: from twice",
                "/admin/usage?from=1h&from=2h",
                "",
                400,
                O("invalid_request"),
            )
            .method(Method::GET),
        ),
        admin(
            case(
                "usage: group by nonsense",
                "/admin/usage?group_by=colour",
                "",
                400,
                O("invalid_request"),
            )
            .method(Method::GET),
        ),
        admin(
            case(
                "usage: from not a time",
                "/admin/usage?from=yesterday-ish",
                "",
                400,
                O("invalid_request"),
            )
            .method(Method::GET),
        ),
    ];
    for case in &cases {
        run(&g.client, &base, case).await;
    }
    // A rotation with an absurd overlap is refused before anything is stored.
    let (id, _) = g.create_key(json!({"name": "rotating"})).await;
    let rotate = admin(case(
        "rotate overlap 100000y",
        &format!("/admin/keys/{id}/rotate"),
        chat(json!({"overlap": "100000y"})),
        400,
        O("invalid_request"),
    ));
    run(&g.client, &base, &rotate).await;
    // The list and the CLI's view still read every key.
    let listed = g.admin(Method::GET, "/admin/keys").send().await.unwrap();
    assert_eq!(listed.status(), 200);
    let listed = json_of(listed).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    assert!(listed["data"][0]["previous_secret_valid_until"].is_null());
    assert_eq!(cases.len() + 1, 20);
}
