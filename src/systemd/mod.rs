//! The daemon's side of systemd: [`notify`] (the sd_notify(3) datagrams, through one
//! [`notify::Notifier`] that `serve` builds and passes down), [`watchdog`] (`WATCHDOG=1` while
//! a probe answers, and the `STATUS=` line) and [`activation`] (a listening socket passed by a
//! `.socket` unit). None of it knows the broker: `serve` hands in the probe and the summary.

pub(crate) mod activation;
pub(crate) mod notify;
pub(crate) mod watchdog;
