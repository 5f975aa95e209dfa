//! The Connect protocol with its JSON codec, as E2B's SDKs speak it to
//! envd: unary calls are one JSON body each way (`application/json`);
//! server streams are enveloped messages (`application/connect+json`:
//! one flags byte, a 4-byte big-endian length, the JSON), the last with
//! the end-of-stream flag and `{}` or `{"error": …}`.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};

/// The content type of Connect streams with the JSON codec.
pub const STREAM_JSON: &str = "application/connect+json";
/// The flag of the end-of-stream envelope.
const END_STREAM: u8 = 0x02;
/// The flag of a compressed envelope (never sent; refused when received).
const COMPRESSED: u8 = 0x01;

/// A Connect error: its code (`not_found`, `invalid_argument`, …) and message.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub code: &'static str,
    pub message: String,
}

impl RpcError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_argument", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new("not_found", message)
    }

    pub fn unimplemented(what: &str) -> Self {
        Self::new(
            "unimplemented",
            format!("{what} is not implemented by Petty's envd yet"),
        )
    }

    /// The HTTP status a unary call answers this error with.
    fn status(&self) -> StatusCode {
        match self.code {
            "invalid_argument" | "out_of_range" | "failed_precondition" => StatusCode::BAD_REQUEST,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "permission_denied" => StatusCode::FORBIDDEN,
            "not_found" => StatusCode::NOT_FOUND,
            "already_exists" | "aborted" => StatusCode::CONFLICT,
            "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        let mut r = (self.status(), axum::Json(self.body())).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

impl From<crate::error::ApiError> for RpcError {
    fn from(e: crate::error::ApiError) -> Self {
        use crate::error::ErrorKind as K;
        let code = match e.kind {
            K::NotFound => "not_found",
            K::BadRequest | K::NotARegularFile => "invalid_argument",
            K::Conflict => "failed_precondition",
            K::Capacity => "resource_exhausted",
            K::InsufficientStorage => "resource_exhausted",
            K::Unauthorized => "unauthenticated",
            K::Unavailable => "unavailable",
            _ => "internal",
        };
        Self::new(code, e.message)
    }
}

/// A unary call's answer: 200 with the message as JSON.
pub fn unary(message: Value) -> Response {
    let mut r = (StatusCode::OK, axum::Json(message)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// One envelope holding `message`.
pub fn envelope(message: &Value) -> Bytes {
    frame(0, message)
}

/// The end-of-stream envelope: `{}`, or the error that ended the stream.
pub fn end_of_stream(error: Option<&RpcError>) -> Bytes {
    let body = match error {
        None => json!({}),
        Some(e) => json!({"error": e.body()}),
    };
    frame(END_STREAM, &body)
}

fn frame(flags: u8, message: &Value) -> Bytes {
    let payload = serde_json::to_vec(message).expect("a JSON value serializes");
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(flags);
    b.put_u32(payload.len() as u32);
    b.put_slice(&payload);
    b.freeze()
}

/// A streaming answer made of the envelopes `frames` yields.
pub fn stream<S>(frames: S) -> Response
where
    S: tokio_stream::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
{
    let mut r = Response::new(Body::from_stream(frames));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(STREAM_JSON));
    r
}

/// The one message of a server-streaming request: its body's first
/// envelope (a JSON body without an envelope is taken too).
pub fn request_message(body: &[u8]) -> Result<Value, RpcError> {
    Ok(request_messages(body)?
        .into_iter()
        .next()
        .unwrap_or_else(|| json!({})))
}

/// Every message of a streaming request's body, in order: its envelopes
/// up to the end-of-stream one (a JSON body without an envelope is one
/// message).
pub fn request_messages(body: &[u8]) -> Result<Vec<Value>, RpcError> {
    let parse = |payload: &[u8]| -> Result<Value, RpcError> {
        if payload.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(payload)
            .map_err(|e| RpcError::invalid(format!("the request is not JSON: {e}")))
    };
    let enveloped =
        matches!(body.first(), Some(&f) if body.len() >= 5 && f & !(COMPRESSED | END_STREAM) == 0);
    if !enveloped {
        return Ok(vec![parse(body)?]);
    }
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err(RpcError::invalid("the request's envelope is cut short"));
        }
        let flags = rest[0];
        if flags & COMPRESSED != 0 {
            return Err(RpcError::invalid(
                "compressed messages are not accepted; send them uncompressed",
            ));
        }
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let payload = rest
            .get(5..5 + len)
            .ok_or_else(|| RpcError::invalid("the request's envelope is cut short"))?;
        if flags & END_STREAM != 0 {
            break;
        }
        out.push(parse(payload)?);
        rest = &rest[5 + len..];
    }
    Ok(out)
}

/// A unary request's JSON body (`{}` when empty).
pub fn unary_message(body: &[u8]) -> Result<Value, RpcError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| RpcError::invalid(format!("the request is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_end_streams_carry_errors() {
        let m = json!({"event": {"start": {"pid": 7}}});
        let f = envelope(&m);
        assert_eq!(f[0], 0);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            f.len() - 5
        );
        assert_eq!(request_message(&f).unwrap(), m);
        let end = end_of_stream(Some(&RpcError::not_found("no process 7")));
        assert_eq!(end[0], END_STREAM);
        let body: Value = serde_json::from_slice(&end[5..]).unwrap();
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(&end_of_stream(None)[5..], b"{}");
        // A bare JSON body, and an empty one.
        assert_eq!(request_message(br#"{"a":1}"#).unwrap()["a"], 1);
        assert_eq!(request_message(b"").unwrap(), json!({}));
        assert!(request_message(&[0, 0, 0, 0, 9, b'{']).is_err());
        assert!(request_message(&[1, 0, 0, 0, 0]).is_err());
        // A client stream: several envelopes, then its end.
        let mut body = envelope(&json!({"start": 1})).to_vec();
        body.extend_from_slice(&envelope(&json!({"data": 2})));
        body.extend_from_slice(&end_of_stream(None));
        let all = request_messages(&body).unwrap();
        assert_eq!(all, vec![json!({"start": 1}), json!({"data": 2})]);
    }
}
