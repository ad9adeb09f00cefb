//! Who may change something through the API: the bearer token read from the environment variable
//! `http.token_env` names, and the check of a request's `Authorization` header against it in
//! constant time. Without a token the API is read-only. Not the routes (`api`), nor where the
//! token's variable is read from the configuration (the CLI passes the token in).

use axum::http::{HeaderMap, StatusCode, header};
use subtle::ConstantTimeEq;

use super::ApiError;

/// The token that enables the API's `POST` requests. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Why the token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("http.token_env names {0}, which is not set or empty")]
    Missing(String),
}

impl Token {
    /// The token held by the environment variable `var` (set and not empty).
    pub fn from_env(var: &str) -> Result<Token, TokenError> {
        match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => Ok(Token(value.trim().to_owned())),
            Ok(_) | Err(_) => Err(TokenError::Missing(var.to_owned())),
        }
    }

    #[cfg(test)]
    fn new(value: &str) -> Token {
        Token(value.to_owned())
    }

    /// Whether `given` is the token, comparing every byte whatever the first difference (the
    /// length is not hidden; the token's bytes are).
    fn matches(&self, given: &str) -> bool {
        self.0.as_bytes().ct_eq(given.as_bytes()).into()
    }
}

/// Lets a mutating request through when it carries `Authorization: Bearer TOKEN`: 403 when no
/// token is configured (the API is read-only), 401 when the header is missing or wrong.
pub fn authorize(token: Option<&Token>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the API is read-only: set http.token_env to enable changes",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if token.matches(given.trim()) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("wrong bearer token")),
        None => Err(ApiError::unauthorized(
            "this request needs an Authorization: Bearer token",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn only_the_exact_token_passes() {
        let token = Token::new("s3cret");
        assert!(authorize(Some(&token), &with_auth("Bearer s3cret")).is_ok());
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret!",
            "Bearer ",
            "s3cret",
            "Basic s3cret",
        ] {
            let e = authorize(Some(&token), &with_auth(wrong)).expect_err(wrong);
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{wrong}");
        }
        let e = authorize(Some(&token), &HeaderMap::new()).expect_err("no header");
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        let e = authorize(None, &with_auth("Bearer s3cret")).expect_err("read-only");
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(format!("{token:?}"), "Token(***)");
    }
}
