//! The web UI at `/ui/`: one HTML shell, one hand-written script and one stylesheet, embedded in
//! the binary (no Node toolchain, no build step). The script renders every page from the same
//! JSON API any client uses, so the UI sees exactly what the caller's token allows.
//!
//! Auth: a token entered once on `/ui/login` is kept in an `HttpOnly`, `SameSite=Strict`
//! cookie, which the API's middleware accepts in place of an `Authorization` header. A request
//! that changes something and is authenticated by the cookie must also carry `X-Warden-CSRF`,
//! a value derived from the token that only a page of this origin can read (`/ui/session`);
//! and any such request whose `Origin` or `Sec-Fetch-Site` says it came from another origin is
//! refused, cookie or not. Every page is served with a strict Content-Security-Policy: scripts,
//! styles and connections only from this origin, no inline scripts or styles.

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::Caller;
use crate::http::AppState;

const SHELL: &str = include_str!("assets/index.html");
const LOGIN: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The cookie that holds the token of a signed-in browser.
pub const SESSION_COOKIE: &str = "warden_session";
/// The header a cookie-authenticated change must carry.
pub const CSRF_HEADER: &str = "x-warden-csrf";

/// Every UI answer's policy: nothing from another origin, nothing inline, not framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(to_ui))
        .route("/ui", get(to_ui))
        .route("/ui/", get(shell))
        .route("/ui/{*page}", get(shell))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/session", get(session))
        .route("/ui/assets/app.js", get(app_js))
        .route("/ui/assets/app.css", get(app_css))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Paths the API's middleware lets through without a caller: the sign-in page, the way out and
/// the static assets (neither holds data).
pub fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/ui" | "/ui/login" | "/ui/logout") || path.starts_with("/ui/assets/")
}

/// A page of the UI (as opposed to its data): a request for one without a valid session is
/// sent to the sign-in page instead of getting a JSON 401.
pub fn is_page(path: &str, method: &Method) -> bool {
    method == Method::GET && (path == "/ui/" || path.starts_with("/ui/")) && path != "/ui/session"
}

/// The token in the session cookie, if the request has one.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The CSRF value of a session: derived from its token, so it needs no server-side state and
/// holds on every replica; readable only by a page of this origin (`/ui/session`).
pub fn csrf_value(token: &str) -> String {
    let digest = Sha256::digest(format!("warden-ui-csrf\0{token}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a cookie-authenticated request carries its session's CSRF value.
pub fn csrf_ok(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers.get(CSRF_HEADER) else {
        return false;
    };
    given.as_bytes().ct_eq(csrf_value(token).as_bytes()).into()
}

/// A request a browser says came from another origin. Browsers that send `Sec-Fetch-Site`
/// (all current ones) are judged by it: anything but `same-origin` or `none` (typed in) is
/// another origin, whatever a proxy did to `Host`. Without it, an `Origin` whose host is
/// neither the `Host` asked for nor the proxy's `X-Forwarded-Host` is. Clients that are not
/// browsers send none of these and pass.
pub fn is_cross_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let Some(origin_host) = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.as_bytes())
    else {
        return true;
    };
    ![header::HOST.as_str(), "x-forwarded-host"]
        .iter()
        .filter_map(|name| headers.get(*name))
        .any(|h| h.as_bytes() == origin_host)
}

/// Whether a method changes something (and so needs the CSRF and origin checks).
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn to_ui() -> Response {
    redirect("/ui/")
}

fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Where a sign-in page sends the browser for a page it could not show.
pub fn to_login(path_and_query: &str) -> Response {
    let next: String = form_urlencoded::byte_serialize(path_and_query.as_bytes()).collect();
    redirect(&format!("/ui/login?next={next}"))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn shell() -> Response {
    html(StatusCode::OK, SHELL.to_string())
}

async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
        .into_response()
}

async fn app_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_CSS,
    )
        .into_response()
}

/// Only a page of the UI is a place to go after signing in.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/ui/",
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn login_html(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let error = match error {
        Some(e) => format!(
            r#"<p class="error" role="alert" id="login-error">{}</p>"#,
            escape(e)
        ),
        None => String::new(),
    };
    html(
        status,
        LOGIN
            .replace("{{next}}", &escape(next))
            .replace("{{error}}", &error),
    )
}

async fn login_page(uri: axum::http::Uri) -> Response {
    let next = uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "next")
            .map(|(_, v)| v.into_owned())
    });
    login_html(StatusCode::OK, safe_next(next.as_deref()), None)
}

/// `POST /ui/login` (a form: `token`, `next`): the token is checked exactly as an API request's
/// would be (and a refusal audited); a good one is set as the session cookie.
async fn login(State(svc): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let client = parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| {
            parts
                .extensions
                .get::<axum::extract::connect_info::MockConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0)
        });
    // A token and a page to go back to: a few hundred bytes; the API's body limit holds too.
    let Ok(body) = axum::body::to_bytes(body, 16 * 1024).await else {
        return login_html(
            StatusCode::PAYLOAD_TOO_LARGE,
            "/ui/",
            Some("The sign-in form was too large."),
        );
    };
    let mut token = None;
    let mut next = None;
    for (k, v) in form_urlencoded::parse(&body) {
        match k.as_ref() {
            "token" => token = Some(v.trim().to_string()),
            "next" => next = Some(v.into_owned()),
            _ => {}
        }
    }
    let next = safe_next(next.as_deref()).to_string();
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return login_html(
            StatusCode::UNPROCESSABLE_ENTITY,
            &next,
            Some("Enter a token (warden token create makes one)."),
        );
    };
    if token
        .bytes()
        .any(|b| !b.is_ascii_graphic() || b == b';' || b == b',')
    {
        return login_html(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That is not a warden token: it has characters no token has."),
        );
    }
    let header = format!("Bearer {token}");
    match svc
        .auth
        .authenticate(Some(header.as_bytes()), client, "POST /ui/login")
        .await
    {
        Ok(_) => {
            let mut resp = redirect(&next);
            let secure =
                if svc.config.tls.is_some() || svc.config.auth.insecure_plaintext_behind_proxy {
                    "; Secure"
                } else {
                    ""
                };
            let cookie =
                format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e) => login_html(
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::UNAUTHORIZED),
            &next,
            Some(&e.message),
        ),
    }
}

/// Forgets the session cookie.
async fn logout() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("warden_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

/// `GET /ui/session`: the caller, and the CSRF value the page sends with every change.
async fn session(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    let who = svc.whoami(&caller);
    let csrf = session_token(&headers).map(csrf_value);
    let body = serde_json::json!({
        "tenant": who.tenant,
        "scopes": who.scopes,
        "token_id": who.token_id,
        "csrf": csrf,
    });
    let mut resp = Response::new(Body::from(body.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; warden_session=wdn_x_y ; b=2")]);
        assert_eq!(session_token(&h), Some("wdn_x_y"));
        assert_eq!(
            session_token(&headers(&[("cookie", "warden_session=")])),
            None
        );
        assert_eq!(
            session_token(&headers(&[("cookie", "xwarden_session=a")])),
            None
        );
    }

    #[test]
    fn csrf_needs_the_sessions_own_value() {
        let v = csrf_value("wdn_a_b");
        assert_eq!(v.len(), 32);
        assert!(csrf_ok(&headers(&[(CSRF_HEADER, &v)]), "wdn_a_b"));
        assert!(!csrf_ok(&headers(&[(CSRF_HEADER, &v)]), "wdn_a_c"));
        assert!(!csrf_ok(&headers(&[]), "wdn_a_b"));
    }

    #[test]
    fn another_origin_is_recognised() {
        let same = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(!is_cross_origin(&same));
        let other = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:3000"),
        ]);
        assert!(is_cross_origin(&other));
        assert!(is_cross_origin(&headers(&[
            ("host", "a"),
            ("origin", "null")
        ])));
        assert!(is_cross_origin(&headers(&[(
            "sec-fetch-site",
            "same-site"
        )])));
        assert!(is_cross_origin(&headers(&[(
            "sec-fetch-site",
            "cross-site"
        )])));
        assert!(!is_cross_origin(&headers(&[(
            "sec-fetch-site",
            "same-origin"
        )])));
        // Behind a proxy that rewrote Host: the browser's own verdict, or the forwarded host.
        let proxied = [
            ("host", "127.0.0.1:8080"),
            ("origin", "https://warden.example"),
        ];
        assert!(is_cross_origin(&headers(&proxied)));
        let mut with_site = proxied.to_vec();
        with_site.push(("sec-fetch-site", "same-origin"));
        assert!(!is_cross_origin(&headers(&with_site)));
        let mut forwarded = proxied.to_vec();
        forwarded.push(("x-forwarded-host", "warden.example"));
        assert!(!is_cross_origin(&headers(&forwarded)));
        assert!(!is_cross_origin(&headers(&[])), "curl sends neither");
    }

    #[test]
    fn sign_in_goes_only_to_a_page_of_the_ui() {
        assert_eq!(safe_next(Some("/ui/jobs/x")), "/ui/jobs/x");
        for bad in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/jobs",
            "/ui\\x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui/", "{bad}");
        }
        assert_eq!(
            escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
