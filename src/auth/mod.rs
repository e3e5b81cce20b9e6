//! Who may do what: credentials, scopes, the access policy, JWTs and the token endpoint.

pub mod credentials;
pub mod endpoint;
pub mod oidc;
pub mod policy;
pub mod refresh;
pub mod source;
pub mod stored;
pub mod token;
