//! Signing in with Gitee: `/login` sends the browser to Gitee with a state and a PKCE verifier
//! kept in a signed cookie; `/login/callback` checks both, exchanges the code and sets the
//! session cookie.

use super::session::{self, LoginState, Session, LOGIN_COOKIE, SESSION_COOKIE};
use super::{add_cookie, redirect, Web, LOGIN_TTL};
use crate::gitee::{Gitee, GiteeError};
use crate::http::{query_get, ApiError, Resp};
use ::http::{header, HeaderMap, StatusCode};

impl Web<'_> {
    pub(super) fn login(&self, g: &Gitee, rd: Option<&str>) -> Resp {
        let st = LoginState {
            state: session::random_token(),
            verifier: session::random_token(),
            rd: session::safe_return(rd),
            exp: crate::util::now_secs() + LOGIN_TTL,
        };
        let mut r = redirect(&g.authorize_url(&st.state, &st.verifier));
        let c = self.signer.sign("login", &st);
        add_cookie(
            &mut r,
            &session::set_cookie(LOGIN_COOKIE, &c, "/login", LOGIN_TTL, self.secure()),
        );
        r
    }

    /// Gitee's answer: the redirect with the session cookie, and the account signed in.
    pub(super) async fn callback(
        &self,
        g: &Gitee,
        q: &[(String, String)],
        headers: &HeaderMap,
    ) -> Result<(Resp, String), ApiError> {
        let st: Option<LoginState> =
            session::cookie(headers, LOGIN_COOKIE).and_then(|c| self.signer.verify("login", c));
        let Some(st) = st.filter(|s| s.exp > crate::util::now_secs()) else {
            return Err(ApiError::html(
                StatusCode::BAD_REQUEST,
                "Sign-in expired",
                "This sign-in was not started from this browser or took too long. Start again.",
            ));
        };
        let state_ok = query_get(q, "state").is_some_and(|s| {
            use subtle::ConstantTimeEq;
            bool::from(s.as_bytes().ct_eq(st.state.as_bytes()))
        });
        if !state_ok {
            tracing::warn!(target: "regate::audit", event = "login_state_mismatch", "sign-in refused: state does not match");
            return Err(ApiError::html(
                StatusCode::BAD_REQUEST,
                "Sign-in refused",
                "The answer from Gitee does not belong to the sign-in this browser started.",
            ));
        }
        // from here on, every answer ends the sign-in this cookie started
        let cleared = session::set_cookie(LOGIN_COOKIE, "", "/login", 0, self.secure());
        let refuse = |status: StatusCode, title: &str, text: &str| {
            ApiError::html(status, title, text).with_header(header::SET_COOKIE, cleared.clone())
        };
        if let Some(e) = query_get(q, "error") {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "Sign-in cancelled",
                &format!("Gitee answered: {e}."),
            ));
        }
        let Some(code) = query_get(q, "code") else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Sign-in refused",
                "Gitee sent no code.",
            ));
        };
        let tokens = g.exchange_code(code, &st.verifier).await.map_err(|e| {
            tracing::warn!(target: "regate::audit", event = "login_failed", error = %e, "sign-in failed");
            match &e {
                GiteeError::Denied(m) => refuse(
                    StatusCode::FORBIDDEN,
                    "Sign-in failed",
                    &format!("Gitee did not accept this sign-in ({m}). Codes work once; start again."),
                ),
                GiteeError::Unreachable(m) => refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in failed",
                    &format!("Gitee is unreachable ({m}). Try again shortly."),
                ),
            }
        })?;
        let login = g
            .complete_login(&tokens)
            .await
            .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, "Sign-in failed", &e.to_string()))?;
        if self.tokens.creds.is_local(&login.user.login) {
            tracing::warn!(target: "regate::audit", event = "login_failed", account = %login.user.login,
                "sign-in refused: the Gitee account has the name of a local account");
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "Account name taken",
                &format!(
                    "The Gitee account {} has the same name as a local regate account, so it cannot sign in here. Ask an administrator.",
                    login.user.login
                ),
            ));
        }
        let s = Session {
            login: login.user.login.clone(),
            id: login.user.id,
            name: login.user.name.clone(),
            email: login.user.email.clone(),
            groups: login.groups.clone(),
            exp: crate::util::now_secs() + g.opts.session_ttl,
            sid: session::random_token(),
        };
        tracing::info!(target: "regate::audit", event = "login", account = %s.login, gitee_id = s.id, "signed in with Gitee");
        let mut r = redirect(&st.rd);
        add_cookie(&mut r, &cleared);
        add_cookie(
            &mut r,
            &session::set_cookie(
                SESSION_COOKIE,
                &self.signer.sign("session", &s),
                "/",
                g.opts.session_ttl,
                self.secure(),
            ),
        );
        Ok((r, s.login))
    }
}
