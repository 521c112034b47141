//! The simulator's memory: scripted settings, queued faults, the call log, and every token,
//! code and identity context it issued, so later calls can be judged against them.
//!
//! Nothing here is ever pruned: a simulator lives for one test or one dev session.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::{Call, Fault, Service, SimOptions};

/// State shared by the server task and the [`super::Sim`] handle.
pub(super) struct Shared {
    /// The one signing identity accepted, and the region its scope must name.
    pub(super) opts: SimOptions,
    /// A std mutex: it is never held across an await, and every critical section is a few
    /// map operations.
    inner: Mutex<Inner>,
}

/// Who a token belongs to.
#[derive(Debug, Clone)]
pub(super) struct Grantee {
    pub(super) client_id: String,
    pub(super) user: String,
}

/// A user's session bound to an access token, with its expiry in Unix seconds.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) user: String,
    pub(super) expires_at: i64,
}

/// An authorization code issued by `issue_auth_code`.
#[derive(Debug, Clone)]
pub(super) struct AuthCode {
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    pub(super) code_challenge: String,
    pub(super) user: String,
}

/// Role credentials the simulated STS issued: what a call signed with them is checked against,
/// and who `GetCallerIdentity` says signed it.
pub(super) struct Issued {
    pub(super) secret_access_key: String,
    pub(super) session_token: String,
    pub(super) expires_at: i64,
    /// `arn:aws:sts::<account>:assumed-role/<role>/<session>`.
    pub(super) arn: String,
    /// `AROA...:<session>`.
    pub(super) user_id: String,
    pub(super) account: String,
}

#[derive(Default)]
pub(super) struct Inner {
    /// Role credentials issued by `AssumeRole`, by access key id.
    pub(super) issued: HashMap<String, Issued>,
    pub(super) default_lifetime_secs: i64,
    pub(super) client_lifetime_secs: HashMap<String, i64>,
    pub(super) credentials_lifetime: Option<Duration>,
    /// Clients whose jwt-bearer and token-exchange(access) answers carry a refresh token.
    pub(super) refresh_for: HashSet<String>,
    faults: VecDeque<Fault>,
    client_faults: HashMap<String, VecDeque<Fault>>,
    /// Calls with their sequence numbers, so an answer that completes late (a Delay fault)
    /// updates its own entry even if another call was logged meanwhile.
    calls: Vec<(u64, Call)>,
    next_call: u64,
    /// Live refresh tokens; using one removes it (rotation).
    pub(super) refresh_tokens: HashMap<String, Grantee>,
    /// `GET /authorize`: answer the redirect with this OAuth `error` instead of a code.
    pub(super) authorize_error: Option<String>,
    /// `GET /authorize`: send this `state` back instead of the one asked with.
    pub(super) authorize_state: Option<String>,
    /// Rotation with grace: a used refresh token stays valid until its successor is used.
    pub(super) rotation_grace: bool,
    /// Grace mode: each rotated refresh token's predecessor, dropped when it is first used.
    pub(super) refresh_parent: HashMap<String, String>,
    pub(super) access_tokens: HashMap<String, Session>,
    /// Identity contexts by their assertion string.
    pub(super) contexts: HashMap<String, Session>,
    pub(super) rejected_assertions: HashSet<String>,
    pub(super) auth_codes: HashMap<String, AuthCode>,
    /// Serial for identities and contexts, so each issued one is distinct.
    pub(super) serial: u64,
}

impl Inner {
    pub(super) fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    pub(super) fn lifetime_secs(&self, client_id: &str) -> i64 {
        self.client_lifetime_secs
            .get(client_id)
            .copied()
            .unwrap_or(self.default_lifetime_secs)
    }
}

impl Shared {
    pub(super) fn new(opts: SimOptions) -> Shared {
        let inner = Inner {
            default_lifetime_secs: i64::try_from(opts.token_lifetime.as_secs()).unwrap_or(i64::MAX),
            ..Inner::default()
        };
        Shared {
            opts,
            inner: Mutex::new(inner),
        }
    }

    /// Locks the state; a poisoned lock is recovered because every update leaves it consistent.
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn push_fault(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    pub(super) fn push_fault_for(&self, client_id: &str, fault: Fault) {
        self.lock()
            .client_faults
            .entry(client_id.to_owned())
            .or_default()
            .push_back(fault);
    }

    /// The fault this call consumes: one queued for its client first (OIDC only), else the
    /// next general one.
    pub(super) fn take_fault(&self, service: Service, client_id: Option<&str>) -> Option<Fault> {
        let mut inner = self.lock();
        if service == Service::Oidc {
            if let Some(fault) = client_id
                .and_then(|c| inner.client_faults.get_mut(c))
                .and_then(VecDeque::pop_front)
            {
                return Some(fault);
            }
        }
        inner.faults.pop_front()
    }

    /// Logs a call as received; [`Shared::finish_call`] fills in the answer.
    pub(super) fn record_call(&self, call: Call) -> u64 {
        let mut inner = self.lock();
        let seq = inner.next_call;
        inner.next_call += 1;
        inner.calls.push((seq, call));
        seq
    }

    pub(super) fn finish_call(&self, seq: u64, status: u16, error: Option<String>) {
        let mut inner = self.lock();
        if let Some((_, call)) = inner.calls.iter_mut().find(|(s, _)| *s == seq) {
            call.status = status;
            call.error = error;
        }
    }

    pub(super) fn calls(&self) -> Vec<Call> {
        self.lock().calls.iter().map(|(_, c)| c.clone()).collect()
    }

    pub(super) fn clear_calls(&self) {
        self.lock().calls.clear();
    }
}
