//! The `subject_app` graph: each token-exchange app points at the app whose token it
//! exchanges. One [`SubjectGraph`] type answers both questions asked of it: what is wrong
//! with the links (the loader's diagnostics: a missing subject, the app itself, a cycle) and
//! in which order the apps start so that every subject runs before the apps that watch it
//! (the broker, at start and on reload).

use std::collections::{BTreeMap, BTreeSet};

use super::types::{Config, Grant};

/// App name -> its `subject_app`, for the token-exchange apps only.
pub(crate) struct SubjectGraph<'a> {
    links: BTreeMap<&'a str, &'a str>,
}

/// What is wrong with one app's `subject_app`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem<'a> {
    /// It names the app itself.
    Itself,
    /// It names no app of this config.
    Missing(&'a str),
    /// The app is in a cycle; the path starts and ends at the app.
    Cycle(Vec<&'a str>),
}

impl Problem<'_> {
    /// The diagnostic's text, reported at the app's `subject_app` value.
    pub(crate) fn message(&self) -> String {
        match self {
            Problem::Itself => "`subject_app` cannot name the app itself".to_string(),
            Problem::Missing(subject) => {
                format!("subject_app `{}` does not exist", subject.escape_debug())
            }
            Problem::Cycle(path) => format!("cycle: {}", path.join(" -> ")),
        }
    }
}

impl<'a> SubjectGraph<'a> {
    /// From `(app, subject_app)` pairs.
    pub(crate) fn new(links: impl IntoIterator<Item = (&'a str, &'a str)>) -> SubjectGraph<'a> {
        SubjectGraph {
            links: links.into_iter().collect(),
        }
    }

    /// The links of a loaded config's token-exchange apps.
    pub(crate) fn of(config: &'a Config) -> SubjectGraph<'a> {
        SubjectGraph::new(
            config
                .apps
                .iter()
                .filter_map(|(name, app)| match &app.grant {
                    Grant::TokenExchange { subject_app, .. } => {
                        Some((name.as_str(), subject_app.as_str()))
                    }
                    _ => None,
                }),
        )
    }

    /// Every problem, by app. `known` are the apps that count as existing (every app file
    /// with a valid name, even one with errors of its own). Each member of a cycle gets
    /// the cycle once, starting at itself; a one-app cycle is [`Problem::Itself`] only.
    pub(crate) fn problems(&self, known: &BTreeSet<&str>) -> Vec<(&'a str, Problem<'a>)> {
        let mut problems = Vec::new();
        for (&name, &subject) in &self.links {
            if subject == name {
                problems.push((name, Problem::Itself));
            } else if !known.contains(subject) {
                problems.push((name, Problem::Missing(subject)));
            }
        }

        // Each app has at most one subject, so following the links from any app either ends
        // or enters exactly one cycle. Visit each app once; a link back into the current walk
        // closes a cycle.
        let mut done: BTreeSet<&str> = BTreeSet::new();
        for &start in self.links.keys() {
            let mut walk: Vec<&'a str> = Vec::new();
            let mut cur: &'a str = start;
            while !done.contains(cur) && !walk.contains(&cur) {
                let Some(&subject) = self.links.get(cur) else {
                    break;
                };
                walk.push(cur);
                cur = subject;
            }
            if let Some(pos) = walk.iter().position(|n| *n == cur) {
                let cycle = &walk[pos..];
                if cycle.len() > 1 {
                    for (i, member) in cycle.iter().enumerate() {
                        let mut path: Vec<&str> = cycle[i..].to_vec();
                        path.extend_from_slice(&cycle[..=i]);
                        problems.push((member, Problem::Cycle(path)));
                    }
                }
            }
            done.extend(walk);
        }
        problems
    }

    /// `names` (in their given order) with every token-exchange app after its subject.
    ///
    /// Repeated passes over `names`, each placing every app whose subject is placed or is
    /// not among `names`, so apps without a subject keep their order in the first pass. A
    /// loaded config has no cycle; if one were left, its apps are appended, never dropped.
    pub(crate) fn start_order(&self, names: &[&'a str]) -> Vec<&'a str> {
        let mut order: Vec<&'a str> = Vec::with_capacity(names.len());
        let mut placed: BTreeSet<&str> = BTreeSet::new();
        let present: BTreeSet<&str> = names.iter().copied().collect();
        let mut progress = true;
        while progress && order.len() < names.len() {
            progress = false;
            for &name in names {
                if placed.contains(name) {
                    continue;
                }
                let ready = match self.links.get(name) {
                    Some(subject) => placed.contains(subject) || !present.contains(subject),
                    None => true,
                };
                if ready {
                    placed.insert(name);
                    order.push(name);
                    progress = true;
                }
            }
        }
        order.extend(names.iter().filter(|name| !placed.contains(*name)));
        order
    }
}

impl Config {
    /// App names in start order: every token-exchange app after its subject app, so it can
    /// subscribe to a running subject (see [`SubjectGraph::start_order`]).
    pub(crate) fn start_order(&self) -> Vec<String> {
        let names: Vec<&str> = self.apps.keys().map(String::as_str).collect();
        SubjectGraph::of(self)
            .start_order(&names)
            .into_iter()
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(app, subject_app)` links, a list of app names, and what is expected of them.
    type Row = (
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
        &'static [&'static str],
    );

    fn problems(links: &[(&'static str, &'static str)], known: &[&str]) -> Vec<String> {
        let known: BTreeSet<&str> = known.iter().copied().collect();
        let mut out: Vec<String> = SubjectGraph::new(links.iter().copied())
            .problems(&known)
            .into_iter()
            .map(|(app, problem)| format!("{app}: {}", problem.message()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn problems_table() {
        let rows: &[Row] = &[
            (&[], &["a"], &[]),
            (&[("b", "a")], &["a", "b"], &[]),
            (&[("b", "a"), ("c", "b")], &["a", "b", "c"], &[]),
            (
                &[("a", "a")],
                &["a"],
                &["a: `subject_app` cannot name the app itself"],
            ),
            (
                &[("a", "nope")],
                &["a"],
                &["a: subject_app `nope` does not exist"],
            ),
            (
                &[("a", "b"), ("b", "a")],
                &["a", "b"],
                &["a: cycle: a -> b -> a", "b: cycle: b -> a -> b"],
            ),
            (
                &[("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")],
                &["a", "b", "c", "d"],
                &[
                    "a: cycle: a -> b -> c -> a",
                    "b: cycle: b -> c -> a -> b",
                    "c: cycle: c -> a -> b -> c",
                ],
            ),
            // Leading into a self-link: only the self-link is reported.
            (
                &[("a", "b"), ("b", "b")],
                &["a", "b"],
                &["b: `subject_app` cannot name the app itself"],
            ),
        ];
        for (links, known, expected) in rows {
            assert_eq!(problems(links, known), *expected, "{links:?}");
        }
    }

    #[test]
    fn start_order_table() {
        let rows: &[Row] = &[
            (&[], &["a", "b"], &["a", "b"]),
            (&[("a", "b")], &["a", "b"], &["b", "a"]),
            // One pass places b, then the next a and c: not a depth-first order.
            (
                &[("a", "b"), ("c", "a")],
                &["a", "b", "c"],
                &["b", "a", "c"],
            ),
            (
                &[("a", "c"), ("c", "d")],
                &["a", "b", "c", "d"],
                &["b", "d", "c", "a"],
            ),
            // A subject outside the config does not hold its app back.
            (&[("a", "gone")], &["a"], &["a"]),
            // A cycle (never in a loaded config) is appended, not dropped.
            (
                &[("a", "b"), ("b", "a")],
                &["a", "b", "c"],
                &["c", "a", "b"],
            ),
        ];
        for (links, names, expected) in rows {
            let graph = SubjectGraph::new(links.iter().copied());
            assert_eq!(graph.start_order(names), *expected, "{links:?}");
        }
    }
}
