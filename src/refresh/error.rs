//! Why a token or role credentials cannot be served: the one error type the handle, the owner
//! task and the credential cache answer with. The socket maps each variant to a status and
//! code (`server/error.rs`).

/// Why a token cannot be served; the socket maps each to a status and code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ServeError {
    /// Nothing will happen until someone logs in.
    #[error("app {app} needs a login: run `iamtokend login {app}`")]
    NeedsLogin {
        /// The app that needs the login.
        app: String,
    },
    /// No valid token can be had now; carries the last upstream error.
    #[error("no valid token for app {app}: {code}: {message}")]
    Unavailable {
        /// The app asked of.
        app: String,
        /// The underlying error code.
        code: String,
        /// The underlying error message.
        message: String,
    },
    /// Credentials asked of an app without `[role]`.
    #[error("app {app} has no [role]; add one to get AWS credentials")]
    NoRole {
        /// The app asked of.
        app: String,
    },
    /// `login` asked of an app whose grant is not authorization-code.
    #[error("app {app} does not use the authorization-code grant")]
    WrongGrant {
        /// The app asked of.
        app: String,
    },
}
