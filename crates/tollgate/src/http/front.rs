//! What the front door answers by itself, always in the API's JSON shape (Anthropic's under
//! `/v1/messages`): unknown routes and methods, request bodies in an encoding the gateway
//! does not read, every error that axum's extractors or layers write as plain text, and
//! the CORS preflights of the origins the operator allowed.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use axum::http::{HeaderName, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Cors;
use crate::error::{quoted, quoted_up_to, ApiError, Shape};

/// Most of a plain-text error body kept as the JSON error's message.
const MAX_PLAIN_ERROR: usize = 1024;

/// The fallback of unknown paths.
pub async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    ApiError::not_found(
        "route_not_found",
        format!(
            "No route for {} {}. See the API reference for the endpoints.",
            request.method(),
            quoted(path)
        ),
    )
    .into_response_for(Shape::of_path(path))
}

/// The fallback of known paths asked with another method.
pub async fn method_not_allowed(request: Request) -> Response {
    let path = request.uri().path();
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}.", request.method(), quoted(path)),
    )
    .into_response_for(Shape::of_path(path))
}

/// Refuses a body in a `Content-Encoding` the gateway does not decode (415), and answers
/// every error response that is not JSON (axum's rejections: a path segment that is not
/// UTF-8, a query that does not parse ...) in the API's JSON shape.
pub async fn api_errors(request: Request, next: Next) -> Response {
    // The console answers in pages of its own.
    if crate::console::owns(request.uri().path()) {
        return next.run(request).await;
    }
    let shape = Shape::of_path(request.uri().path());
    if let Some(encoding) = request.headers().get(header::CONTENT_ENCODING) {
        let identity = encoding
            .to_str()
            .is_ok_and(|e| e.trim().eq_ignore_ascii_case("identity"));
        if !identity {
            let shown = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_encoding",
                format!(
                    "The request body is sent with Content-Encoding: {}; the gateway reads only uncompressed bodies. Send it without Content-Encoding.",
                    quoted(&shown)
                ),
            )
            .into_response_for(shape);
        }
    }
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR * 4)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("Error").to_string(),
        text => quoted_up_to(text, MAX_PLAIN_ERROR),
    };
    let error = ApiError::new(status, plain_code(status), message);
    parts
        .extensions
        .insert(crate::error::ErrorCode(plain_code(status)));
    let json = error.into_response_for(shape);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, json.into_body())
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The stable code of an error the HTTP layer raised.
pub fn plain_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "route_not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "body_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "unprocessable_request",
        431 => "headers_too_large",
        400..=499 => "bad_request",
        _ => "internal_error",
    }
}

/// Request headers a browser may send: the keys, the API versions and betas the SDKs set.
const CORS_REQUEST_HEADERS: [&str; 9] = [
    "authorization",
    "content-type",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-beta",
    "traceparent",
    "tracestate",
];

/// Response headers a browser page may read.
const CORS_RESPONSE_HEADERS: [&str; 7] = [
    "x-request-id",
    "x-tollgate-cost",
    "x-tollgate-model",
    "x-tollgate-provider",
    "x-tollgate-attempts",
    "x-tollgate-dropped-fields",
    "retry-after",
];

/// The CORS layer of `[cors]`: preflights answered for the allowed origins, no cookies
/// (keys travel in headers), preflights cached for ten minutes.
pub fn cors_layer(cors: &Cors) -> CorsLayer {
    let origins = match cors {
        Cors::Any => AllowOrigin::any(),
        Cors::Origins(origins) => AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        ),
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers(CORS_REQUEST_HEADERS.map(HeaderName::from_static))
        .expose_headers(CORS_RESPONSE_HEADERS.map(HeaderName::from_static))
        .max_age(std::time::Duration::from_secs(600))
}
