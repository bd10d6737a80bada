//! The protections an allowed destructive call is held to: those of *every* matching allow rule,
//! combined so that adding a rule can only make the gate stricter.
//!
//! The first matching rule used to decide alone, so a broad rule without `protect_tags` listed
//! before a narrow one switched the narrow rule's protected tags and budget off. Now:
//!
//! - protected tags: the union of every matching rule's patterns;
//! - budgets: every matching rule's budget must have room, and each is spent
//!   ([`crate::rule_budget`]);
//! - dry run: if the policy or any matching rule says so;
//! - deny rules still win before any of this ([`crate::policy::Policy::decide`]).
//!
//! A new safety switch on rules combines the same way, with one line through [`Protections::any`]
//! (on if any matching rule turns it on) or [`Protections::all`] (off only if every matching
//! rule turns it off).

use std::sync::Arc;

use crate::policy::Rule;

/// The combined protections of every allow rule matching one request.
#[derive(Debug, Clone)]
pub struct Protections {
    /// Every matching allow rule, in policy order; never empty.
    rules: Vec<Arc<Rule>>,
    /// The policy-wide `dry_run`.
    policy_dry_run: bool,
}

// === impl Protections ===

impl Protections {
    /// The protections of `rules` (the matching allow rules, in order; at least one) under a
    /// policy whose own `dry_run` is `policy_dry_run`.
    pub fn new(rules: Vec<Arc<Rule>>, policy_dry_run: bool) -> Self {
        debug_assert!(!rules.is_empty(), "an allow decision names its rules");
        Self {
            rules,
            policy_dry_run,
        }
    }

    /// The matching allow rules, in policy order.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// Their names, in policy order (audit records and dry-run answers list them all).
    pub fn rule_names(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.name.clone()).collect()
    }

    /// True if any matching rule has `flag` on (for switches that make the gate stricter).
    pub fn any(&self, flag: impl Fn(&Rule) -> bool) -> bool {
        self.rules.iter().any(|r| flag(r))
    }

    /// True if every matching rule has `flag` on (for switches that relax a check: the check
    /// stays on unless every rule turns it off).
    pub fn all(&self, flag: impl Fn(&Rule) -> bool) -> bool {
        self.rules.iter().all(|r| flag(r))
    }

    /// Report instead of mutating: the policy or any matching rule says so.
    pub fn dry_run(&self) -> bool {
        self.policy_dry_run || self.any(Rule::dry_run)
    }

    /// Whether the policy-wide `dry_run` is on (as opposed to a rule's).
    pub fn policy_dry_run(&self) -> bool {
        self.policy_dry_run
    }

    /// True when some matching rule protects tags (a fresh read is then needed before a delete).
    pub fn protects_tags(&self) -> bool {
        self.any(Rule::protects_tags)
    }

    /// The first of `tags` that any matching rule protects, with the rule protecting it.
    pub fn protected_tag<'a>(&'a self, tags: &'a [String]) -> Option<(&'a str, &'a str)> {
        self.rules.iter().find_map(|rule| {
            rule.protected_tag(tags)
                .map(|tag| (tag, rule.name.as_str()))
        })
    }

    /// The union of the protected patterns as written, without repeats, in policy order.
    pub fn protected_patterns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for pattern in self.rules.iter().flat_map(|r| r.protected_patterns()) {
            if !out.contains(&pattern.as_str()) {
                out.push(pattern);
            }
        }
        out
    }

    /// The budgets that apply, as (rule, size per window); each must have room.
    pub fn budgets(&self) -> Vec<(&str, u32)> {
        self.rules
            .iter()
            .filter_map(|r| r.budget().map(|b| (r.name.as_str(), b.size())))
            .collect()
    }

    /// The smallest budget, if any rule has one.
    pub fn tightest_budget(&self) -> Option<(&str, u32)> {
        self.budgets().into_iter().min_by_key(|(_, size)| *size)
    }
}
