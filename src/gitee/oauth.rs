//! Gitee's OAuth2 endpoints on the `oauth2` crate: the authorization URL (state, PKCE S256), the
//! code exchange, the password grant and refresh, each one call on regate's own HTTP client
//! (its deadline, no redirects), with Gitee's answers sorted into refusals and outages.

use super::{Gitee, GiteeError, Options, TokenSet};
use std::sync::atomic::{AtomicU16, Ordering};

/// Gitee's answers at `/oauth/token` carry `created_at` besides the standard fields.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub(super) struct GiteeTokenFields {
    #[serde(default)]
    created_at: Option<u64>,
}

impl oauth2::ExtraTokenFields for GiteeTokenFields {}

type GiteeTokenResponse = oauth2::StandardTokenResponse<GiteeTokenFields, oauth2::basic::BasicTokenType>;

/// The OAuth2 client for Gitee: authorization and token endpoints set, client credentials
/// sent as form parameters (what Gitee wants).
pub(super) type OAuthClient = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    GiteeTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

type TokenError = oauth2::RequestTokenError<GiteeError, oauth2::basic::BasicErrorResponse>;

/// The `oauth2` client's HTTP calls, made by [`Gitee::token_call`]; keeps the last status.
struct TokenHttp<'a> {
    gitee: &'a Gitee,
    status: AtomicU16,
}

impl<'a> TokenHttp<'a> {
    fn new(gitee: &'a Gitee) -> Self {
        TokenHttp {
            gitee,
            status: AtomicU16::new(0),
        }
    }
}

impl<'c> oauth2::AsyncHttpClient<'c> for TokenHttp<'_> {
    type Error = GiteeError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, GiteeError>> + Send + 'c>>;

    fn call(&'c self, req: oauth2::HttpRequest) -> Self::Future {
        Box::pin(self.gitee.token_call(req, &self.status))
    }
}

/// The OAuth2 client for `opts`: Gitee's `/oauth/authorize` and `/oauth/token`.
pub(super) fn client(opts: &Options) -> Result<OAuthClient, String> {
    let bad = |what: &'static str| move |e: oauth2::url::ParseError| format!("auth.gitee: {what} is not a URL: {e}");
    let mut oauth = oauth2::Client::new(oauth2::ClientId::new(opts.client_id.clone()))
        .set_auth_type(oauth2::AuthType::RequestBody)
        .set_auth_uri(oauth2::AuthUrl::new(format!("{}/oauth/authorize", opts.base_url)).map_err(bad("base_url"))?)
        .set_token_uri(oauth2::TokenUrl::new(format!("{}/oauth/token", opts.base_url)).map_err(bad("base_url"))?)
        .set_redirect_uri(oauth2::RedirectUrl::new(opts.redirect_url.clone()).map_err(bad("redirect_url"))?);
    if let Some(s) = &opts.client_secret {
        oauth = oauth.set_client_secret(oauth2::ClientSecret::new(s.clone()));
    }
    Ok(oauth)
}

impl Gitee {
    fn scopes(&self) -> impl Iterator<Item = oauth2::Scope> + '_ {
        self.opts.scopes.iter().map(|s| oauth2::Scope::new(s.clone()))
    }

    /// Where `/login` sends the browser: the authorization endpoint with `state` and the PKCE
    /// S256 challenge of `verifier`.
    pub fn authorize_url(&self, state: &str, verifier: &str) -> String {
        let verifier = oauth2::PkceCodeVerifier::new(verifier.to_owned());
        let (url, _) = self
            .oauth
            .authorize_url(|| oauth2::CsrfToken::new(state.to_owned()))
            .add_scopes(self.scopes())
            .set_pkce_challenge(oauth2::PkceCodeChallenge::from_code_verifier_sha256(&verifier))
            .url();
        url.into()
    }

    /// One call to the token endpoint for the `oauth2` client, on this client (its deadline, no
    /// redirects). Gitee busy (5xx, 429) counts as unreachable; `status` keeps the answer's status
    /// for [`Self::token_error`].
    async fn token_call(
        &self,
        req: oauth2::HttpRequest,
        status: &AtomicU16,
    ) -> Result<oauth2::HttpResponse, GiteeError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let req = reqwest::Request::try_from(req).map_err(Self::unreachable)?;
        let r = self.http.execute(req).await.map_err(Self::unreachable)?;
        let code = r.status();
        status.store(code.as_u16(), Ordering::Relaxed);
        if code.is_server_error() || code.as_u16() == 429 {
            return Err(GiteeError::Unreachable(format!("token endpoint answered {code}")));
        }
        let headers = r.headers().clone();
        let body = r.bytes().await.map_err(Self::unreachable)?;
        let mut resp = oauth2::HttpResponse::new(body.to_vec());
        *resp.status_mut() = code;
        *resp.headers_mut() = headers;
        Ok(resp)
    }

    /// Gitee's refusal in its own words (`error: error_description`); an answer that is not
    /// OAuth2 is a refusal when its status is one, else Gitee is not working as it should.
    fn token_error(e: TokenError, status: u16) -> GiteeError {
        match e {
            oauth2::RequestTokenError::Request(e) => e,
            oauth2::RequestTokenError::ServerResponse(e) => GiteeError::Denied(match e.error_description() {
                Some(d) if !d.is_empty() => format!("{}: {d}", e.error()),
                _ => e.error().to_string(),
            }),
            oauth2::RequestTokenError::Parse(..) | oauth2::RequestTokenError::Other(_) => {
                match reqwest::StatusCode::from_u16(status) {
                    Ok(s) if !s.is_success() => GiteeError::Denied(s.to_string()),
                    _ => GiteeError::Unreachable("unexpected answer from the token endpoint".into()),
                }
            }
        }
    }

    fn token_set(t: GiteeTokenResponse) -> TokenSet {
        use oauth2::TokenResponse as _;
        TokenSet {
            access_token: t.access_token().secret().clone(),
            expires_in: t.expires_in().map(|d| d.as_secs()),
            refresh_token: t.refresh_token().map(|r| r.secret().clone()),
            created_at: t.extra_fields().created_at,
        }
    }

    pub async fn exchange_code(&self, code: &str, verifier: &str) -> Result<TokenSet, GiteeError> {
        let call = TokenHttp::new(self);
        self.oauth
            .exchange_code(oauth2::AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(oauth2::PkceCodeVerifier::new(verifier.to_owned()))
            .request_async(&call)
            .await
            .map(Self::token_set)
            .map_err(|e| Self::token_error(e, call.status.load(Ordering::Relaxed)))
    }

    pub(super) async fn password_grant(&self, user: &str, pass: &str) -> Result<TokenSet, GiteeError> {
        let call = TokenHttp::new(self);
        let user = oauth2::ResourceOwnerUsername::new(user.to_owned());
        let pass = oauth2::ResourceOwnerPassword::new(pass.to_owned());
        self.oauth
            .exchange_password(&user, &pass)
            .add_scopes(self.scopes())
            .request_async(&call)
            .await
            .map(Self::token_set)
            .map_err(|e| Self::token_error(e, call.status.load(Ordering::Relaxed)))
    }

    pub(super) async fn refresh(&self, refresh_token: &str) -> Result<TokenSet, GiteeError> {
        let call = TokenHttp::new(self);
        let rt = oauth2::RefreshToken::new(refresh_token.to_owned());
        self.oauth
            .exchange_refresh_token(&rt)
            .request_async(&call)
            .await
            .map(Self::token_set)
            .map_err(|e| Self::token_error(e, call.status.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_endpoint_errors_are_refusals_or_unreachable() {
        use oauth2::basic::{BasicErrorResponse, BasicErrorResponseType};
        use oauth2::RequestTokenError;
        let refused = BasicErrorResponse::new(
            BasicErrorResponseType::InvalidGrant,
            Some("the authorization code is invalid or was used".into()),
            None,
        );
        assert_eq!(
            Gitee::token_error(RequestTokenError::ServerResponse(refused), 401),
            GiteeError::Denied("invalid_grant: the authorization code is invalid or was used".into())
        );
        let bare = BasicErrorResponse::new(BasicErrorResponseType::InvalidClient, None, None);
        assert_eq!(
            Gitee::token_error(RequestTokenError::ServerResponse(bare), 401),
            GiteeError::Denied("invalid_client".into())
        );
        assert_eq!(
            Gitee::token_error(RequestTokenError::Other("empty".into()), 400),
            GiteeError::Denied("400 Bad Request".into())
        );
        assert!(matches!(
            Gitee::token_error(RequestTokenError::Other("not JSON".into()), 200),
            GiteeError::Unreachable(_)
        ));
        let busy = GiteeError::Unreachable("token endpoint answered 503 Service Unavailable".into());
        assert_eq!(Gitee::token_error(RequestTokenError::Request(busy.clone()), 503), busy);
    }
}
