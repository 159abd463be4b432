//! The console at `/ui`: a few static pages embedded in the binary (`crates/shepherd/console/`)
//! that read and change everything through the typed `/admin` endpoints. Signing in with the
//! master key opens a session: an HttpOnly, SameSite=Strict cookie (Secure behind TLS), valid 8
//! hours, and a CSRF token that every change made with that cookie must carry in
//! `x-csrf-token`. Without a session, `/ui` is the sign-in form (and its stylesheet) and nothing
//! else is served.
//! Sessions live in this process (per replica: sign in again on another one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ring::rand::{SecureRandom, SystemRandom};

use crate::state::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "shepherd_console";
/// The header that carries the CSRF token on changes.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts.
pub const SESSION_LIFE: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most (the oldest leave first).
const MAX_SESSIONS: usize = 1_000;
/// A wrong master key waits this long (slows guessing without holding a thread).
const REFUSAL_DELAY: Duration = Duration::from_millis(300);

const INDEX_HTML: &str = include_str!("../../console/index.html");
const SIGN_IN_HTML: &str = include_str!("../../console/sign-in.html");
const APP_JS: &str = include_str!("../../console/app.js");
const CHARTS_JS: &str = include_str!("../../console/charts.js");
const APP_CSS: &str = include_str!("../../console/app.css");

#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
    expires: Instant,
}

/// The open console sessions of this process.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        match self.open.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Opens a session: its cookie value and CSRF token.
    fn open(&self) -> Option<(String, String)> {
        let random = SystemRandom::new();
        let token = random_hex(&random)?;
        let csrf = random_hex(&random)?;
        let mut open = self.lock();
        let now = Instant::now();
        open.retain(|_, session| session.expires > now);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, session)| session.expires)
                .map(|(token, _)| token.clone())
        {
            open.remove(&oldest);
        }
        open.insert(
            token.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_LIFE,
            },
        );
        Some((token, csrf))
    }

    /// The live session named by the request's cookie.
    pub fn of(&self, headers: &HeaderMap) -> Option<Session> {
        let token = cookie_value(headers)?;
        let mut open = self.lock();
        match open.get(token) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                open.remove(token);
                None
            }
            None => None,
        }
    }

    fn close(&self, headers: &HeaderMap) {
        if let Some(token) = cookie_value(headers) {
            self.lock().remove(token);
        }
    }
}

fn random_hex(random: &SystemRandom) -> Option<String> {
    let mut bytes = [0u8; 32];
    random.fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The session cookie's value, if the request carries one.
fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Equal in constant time (for secrets).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Whether a change made with a session carries its CSRF token.
pub fn csrf_ok(session: &Session, headers: &HeaderMap) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|token| same_secret(token.as_bytes(), session.csrf.as_bytes()))
}

/// The console's routes (they check the session themselves; `/admin` has its own guard).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route(
            "/ui/app.js",
            get(|s, h| asset(s, h, APP_JS, "text/javascript")),
        )
        .route(
            "/ui/charts.js",
            get(|s, h| asset(s, h, CHARTS_JS, "text/javascript")),
        )
        .route("/ui/app.css", get(stylesheet))
        .route("/ui/sign-in", post(sign_in))
        .route("/ui/sign-out", post(sign_out))
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(headers);
    response
}

/// No caching, no framing, no scripts from elsewhere.
fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
}

fn sign_in_page(status: StatusCode, message: &str) -> Response {
    let message = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\" role=\"alert\">{message}</p>")
    };
    html(status, SIGN_IN_HTML.replace("<!--MESSAGE-->", &message))
}

async fn page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if state.runtime().config.admin.is_none() {
        return sign_in_page(
            StatusCode::NOT_FOUND,
            "The console is off: set admin.master_key in the config.",
        );
    }
    match state.console.of(&headers) {
        Some(_) => html(StatusCode::OK, INDEX_HTML.to_owned()),
        None => sign_in_page(StatusCode::OK, ""),
    }
}

async fn asset(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: &'static str,
    content_type: &'static str,
) -> Response {
    if state.console.of(&headers).is_none() {
        return (StatusCode::UNAUTHORIZED, "sign in at /ui").into_response();
    }
    let mut response = body.into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure_headers(out);
    response
}

/// The stylesheet, needed by the sign-in page too (it holds nothing but styles).
async fn stylesheet() -> Response {
    let mut response = APP_CSS.into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css"));
    secure_headers(out);
    response
}

fn session_cookie(state: &AppState, value: &str, max_age: u64) -> HeaderValue {
    let secure = if state.runtime().config.server.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&cookie)
        .unwrap_or(HeaderValue::from_static("shepherd_console=; Max-Age=0"))
}

fn redirect_to_console(cookie: HeaderValue) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/ui"));
    headers.insert(header::SET_COOKIE, cookie);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Counts a session event (`shepherd_console_sessions_total{event}`).
fn count(state: &AppState, event: &str) {
    state
        .metrics
        .console_sessions
        .with_label_values(&[event])
        .inc();
}

/// The `key` field of the sign-in form (`application/x-www-form-urlencoded`).
fn presented_key(form: &[u8]) -> String {
    form_urlencoded::parse(form)
        .find(|(name, _)| name == "key")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

async fn sign_in(State(state): State<Arc<AppState>>, form: Bytes) -> Response {
    let master = state
        .runtime()
        .config
        .admin
        .as_ref()
        .map(|admin| admin.master_key.expose().to_owned());
    let Some(master) = master else {
        return sign_in_page(StatusCode::NOT_FOUND, "The console is off.");
    };
    let presented = presented_key(&form);
    if !same_secret(presented.trim().as_bytes(), master.as_bytes()) {
        tokio::time::sleep(REFUSAL_DELAY).await;
        count(&state, "refused");
        tracing::warn!("console: sign-in refused (wrong master key)");
        return sign_in_page(StatusCode::UNAUTHORIZED, "That is not the master key.");
    }
    let Some((token, _csrf)) = state.console.open() else {
        return sign_in_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The system's random source failed; try again.",
        );
    };
    count(&state, "sign_in");
    tracing::info!("console: signed in");
    redirect_to_console(session_cookie(&state, &token, SESSION_LIFE.as_secs()))
}

async fn sign_out(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(session) = state.console.of(&headers) else {
        return redirect_to_console(session_cookie(&state, "", 0));
    };
    if !csrf_ok(&session, &headers) {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
    }
    state.console.close(&headers);
    count(&state, "sign_out");
    tracing::info!("console: signed out");
    redirect_to_console(session_cookie(&state, "", 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; shepherd_console=abc; b=2"),
        );
        assert_eq!(cookie_value(&headers), Some("abc"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("shepherd_consoleX=1"),
        );
        assert_eq!(cookie_value(&headers), None);
    }

    #[test]
    fn sessions_open_check_and_close() {
        let sessions = Sessions::default();
        let (token, csrf) = sessions.open().unwrap_or_default();
        assert_eq!((token.len(), csrf.len()), (64, 64));
        let mut headers = HeaderMap::new();
        let cookie = format!("{COOKIE}={token}");
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&cookie).unwrap_or(HeaderValue::from_static("")),
        );
        let session = sessions
            .of(&headers)
            .unwrap_or_else(|| panic!("open session"));
        assert!(!csrf_ok(&session, &headers));
        headers.insert(
            CSRF_HEADER,
            HeaderValue::from_str(&csrf).unwrap_or(HeaderValue::from_static("")),
        );
        assert!(csrf_ok(&session, &headers));
        sessions.close(&headers);
        assert!(sessions.of(&headers).is_none());
    }
}
