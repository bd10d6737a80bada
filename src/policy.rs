//! The allow-list for destructive calls: deny by default, `deny` rules override `allow` rules.
//!
//! A rule names clients, actions, owners, package types and package-name globs (anchored, `*`
//! stays inside one `/` part, `**` crosses them), matched against the decoded name. Allow rules
//! may also protect container tags, carry a per-client budget and ask for dry runs; every matching
//! allow rule's protections apply together ([`crate::protections`]). [`Policy::decide`] is the
//! one decision function: the server and `packages-proxy policy explain` both call it.

use std::{collections::HashSet, fmt, path::PathBuf, sync::Arc, time::Duration};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::{
    config::ConfigError,
    protections::Protections,
    route::{Operation, Owner, PackageType, Route},
    rule_budget::RuleBudget,
    shared::BudgetDebt,
};

/// `[policy]` as written in the config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Rules live in this file instead (same keys as here: `dry_run`, `[[allow]]`, `[[deny]]`).
    pub file: Option<PathBuf>,
    /// Every allowed destructive call only reports what it would do.
    #[serde(default)]
    pub dry_run: bool,
    /// Allow rules.
    #[serde(default)]
    pub allow: Vec<RawRule>,
    /// Deny rules; any match wins over every allow rule.
    #[serde(default)]
    pub deny: Vec<RawRule>,
}

/// The rules part, also the whole content of a separate policy file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    /// See [`RawPolicy::dry_run`].
    #[serde(default)]
    pub dry_run: bool,
    /// Allow rules.
    #[serde(default)]
    pub allow: Vec<RawRule>,
    /// Deny rules.
    #[serde(default)]
    pub deny: Vec<RawRule>,
}

/// One rule as written. An absent field matches anything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Shown in audit records and denials.
    pub name: String,
    /// Client names.
    pub clients: Option<Vec<String>>,
    /// `delete_version`, `restore_version`, `delete_package`, `restore_package`.
    pub actions: Option<Vec<String>>,
    /// Org or user logins (case-insensitive). A rule with `owners` never matches `/user/...`.
    pub owners: Option<Vec<String>>,
    /// Package types.
    pub package_types: Option<Vec<String>>,
    /// Anchored globs on the decoded package name.
    pub packages: Option<Vec<String>>,
    /// Container versions carrying a tag matching one of these are never deleted (allow only).
    #[serde(default)]
    pub protect_tags: Vec<String>,
    /// Destructive calls per client per budget window under this rule (allow only).
    pub max_per_hour: Option<u32>,
    /// Calls this rule allows only report what they would do (allow only).
    #[serde(default)]
    pub dry_run: bool,
    /// Refuse deleting a container version a tagged image index references (allow only;
    /// default on). See [`crate::guard`].
    pub multi_arch_guard: Option<bool>,
}

/// The compiled policy: swapped whole on reload (budgets start afresh then).
pub struct Policy {
    /// Report instead of mutating.
    pub dry_run: bool,
    allow: Vec<Arc<Rule>>,
    deny: Vec<Arc<Rule>>,
}

/// A compiled rule.
pub struct Rule {
    /// Its name.
    pub name: String,
    /// A deny rule (owners then also cover `/user/...`).
    deny: bool,
    clients: Option<HashSet<String>>,
    actions: Option<HashSet<Operation>>,
    owners: Option<HashSet<String>>,
    package_types: Option<HashSet<PackageType>>,
    packages: Option<GlobSet>,
    protect: Option<(GlobSet, Vec<String>)>,
    budget: Option<RuleBudget>,
    dry_run: bool,
    /// The multi-arch guard runs for container deletes under this rule.
    multi_arch_guard: bool,
}

/// What the policy says about one destructive request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Allowed by every one of these matching allow rules, whose protections all apply.
    Allow(Protections),
    /// No allow rule matches.
    NoRule,
    /// A deny rule matches.
    DeniedBy(Arc<Rule>),
}

// === impl RawPolicy ===

impl RawPolicy {
    /// Compiles the inline rules, or the named file's. `clients` are the configured names;
    /// `base` resolves a relative `file`.
    pub fn compile(
        self,
        clients: &HashSet<String>,
        budget_window: Duration,
        base: Option<&std::path::Path>,
    ) -> Result<Policy, ConfigError> {
        let rules = match &self.file {
            Some(path) => {
                if !self.allow.is_empty() || !self.deny.is_empty() || self.dry_run {
                    return Err(invalid(
                        "policy.file",
                        "set rules inline or in the file, not both",
                    ));
                }
                let path = base.map_or_else(|| path.clone(), |dir| dir.join(path));
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                toml::from_str::<RawRules>(&text).map_err(ConfigError::Parse)?
            }
            None => RawRules {
                dry_run: self.dry_run,
                allow: self.allow,
                deny: self.deny,
            },
        };
        rules.compile(clients, budget_window)
    }
}

impl RawRules {
    fn compile(self, clients: &HashSet<String>, window: Duration) -> Result<Policy, ConfigError> {
        let mut names = HashSet::new();
        let mut compile_all =
            |raw: Vec<RawRule>, kind: &str| -> Result<Vec<Arc<Rule>>, ConfigError> {
                let mut out = Vec::with_capacity(raw.len());
                for (i, rule) in raw.into_iter().enumerate() {
                    let field = format!("policy.{kind}[{i}]");
                    if !names.insert(rule.name.clone()) {
                        return Err(invalid(
                            &format!("{field}.name"),
                            "rule names must be unique",
                        ));
                    }
                    out.push(Arc::new(rule.compile(
                        &field,
                        kind == "allow",
                        clients,
                        window,
                    )?));
                }
                Ok(out)
            };
        let allow = compile_all(self.allow, "allow")?;
        let deny = compile_all(self.deny, "deny")?;
        Ok(Policy {
            dry_run: self.dry_run,
            allow,
            deny,
        })
    }
}

impl RawRule {
    fn compile(
        self,
        field: &str,
        allow: bool,
        known_clients: &HashSet<String>,
        window: Duration,
    ) -> Result<Rule, ConfigError> {
        if self.name.trim().is_empty() {
            return Err(invalid(&format!("{field}.name"), "must not be empty"));
        }
        if !allow
            && (!self.protect_tags.is_empty()
                || self.max_per_hour.is_some()
                || self.dry_run
                || self.multi_arch_guard.is_some())
        {
            return Err(invalid(
                field,
                "protect_tags, max_per_hour, dry_run and multi_arch_guard belong on allow rules",
            ));
        }
        let clients = self
            .clients
            .map(|list| {
                for name in &list {
                    if !known_clients.contains(name) {
                        return Err(invalid(
                            &format!("{field}.clients"),
                            &format!("no client named {name:?}"),
                        ));
                    }
                }
                Ok(list.into_iter().collect())
            })
            .transpose()?;
        let actions = self
            .actions
            .map(|list| {
                list.iter()
                    .map(|a| action(a, field))
                    .collect::<Result<HashSet<_>, _>>()
            })
            .transpose()?;
        let owners = self
            .owners
            .map(|list| list.iter().map(|o| o.to_ascii_lowercase()).collect());
        let package_types = self
            .package_types
            .map(|list| {
                list.iter()
                    .map(|t| {
                        PackageType::parse(t).ok_or_else(|| {
                            invalid(
                                &format!("{field}.package_types"),
                                &format!("unknown type {t:?}"),
                            )
                        })
                    })
                    .collect::<Result<HashSet<_>, _>>()
            })
            .transpose()?;
        let packages = self
            .packages
            .map(|list| globs(&list, &format!("{field}.packages"), true))
            .transpose()?;
        let protect = if self.protect_tags.is_empty() {
            None
        } else {
            Some((
                globs(&self.protect_tags, &format!("{field}.protect_tags"), false)?,
                self.protect_tags,
            ))
        };
        let budget = self
            .max_per_hour
            .map(|n| budget(n, window, &format!("{field}.max_per_hour")))
            .transpose()?;
        Ok(Rule {
            name: self.name,
            deny: !allow,
            clients,
            actions,
            owners,
            package_types,
            packages,
            protect,
            budget,
            dry_run: self.dry_run,
            multi_arch_guard: self.multi_arch_guard.unwrap_or(true),
        })
    }
}

fn action(name: &str, field: &str) -> Result<Operation, ConfigError> {
    Ok(match name {
        "delete_version" => Operation::DeleteVersion,
        "restore_version" => Operation::RestoreVersion,
        "delete_package" => Operation::DeletePackage,
        "restore_package" => Operation::RestorePackage,
        other => {
            return Err(invalid(
                &format!("{field}.actions"),
                &format!(
                    "unknown action {other:?} (delete_version, restore_version, delete_package, restore_package)"
                ),
            ));
        }
    })
}

/// Package names match case-insensitively (GitHub resolves them so; a deny rule must not be
/// dodged by spelling `BASE/runtime`); tags are case-sensitive, as in OCI registries.
fn globs(patterns: &[String], field: &str, case_insensitive: bool) -> Result<GlobSet, ConfigError> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        let glob: Glob = GlobBuilder::new(pattern)
            .literal_separator(true) // `*` stays within one `/` part; `**` crosses
            .case_insensitive(case_insensitive)
            .build()
            .map_err(|e| invalid(field, &format!("bad pattern {pattern:?}: {e}")))?;
        set.add(glob);
    }
    set.build().map_err(|e| invalid(field, &e.to_string()))
}

/// A budget of `n` calls at once, refilling over `window`.
fn budget(n: u32, window: Duration, field: &str) -> Result<RuleBudget, ConfigError> {
    if n == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    if window.is_zero() || (window / n).is_zero() {
        return Err(invalid(field, "too large for the budget window"));
    }
    Ok(RuleBudget::new(n, window))
}

fn invalid(field: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

// === impl Policy ===

impl Policy {
    /// The deny-everything policy.
    pub fn deny_all() -> Self {
        Self {
            dry_run: false,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }

    /// Keeps what each budget of `previous` (the policy before a reload) counted, for the rules
    /// of the same name whose budget is unchanged.
    pub fn keep_budgets_of(&self, previous: &Policy) {
        for rule in &self.allow {
            let old = previous.allow.iter().find(|old| old.name == rule.name);
            if let (Some(budget), Some(old)) = (rule.budget(), old.and_then(|o| o.budget())) {
                budget.keep_from(old);
            }
        }
    }

    /// The calls made under every allow rule's budget that it still counts (see
    /// [`crate::shared::Replica::budget_debts`]).
    pub fn budget_debts(&self) -> Vec<BudgetDebt> {
        self.allow
            .iter()
            .flat_map(|rule| rule.budget_debts())
            .collect()
    }

    /// The decision for `client` doing `route` (a destructive route): a matching deny rule
    /// wins; else every matching allow rule's protections apply together.
    pub fn decide(&self, client: &str, route: &Route) -> Decision {
        if let Some(rule) = self.deny.iter().find(|r| r.matches(client, route)) {
            return Decision::DeniedBy(rule.clone());
        }
        let matching: Vec<Arc<Rule>> = self
            .allow
            .iter()
            .filter(|r| r.matches(client, route))
            .cloned()
            .collect();
        if matching.is_empty() {
            return Decision::NoRule;
        }
        Decision::Allow(Protections::new(matching, self.dry_run))
    }

    /// Whether any allow rule exists (then an audit log is required).
    pub fn has_allow_rules(&self) -> bool {
        !self.allow.is_empty()
    }

    /// Whether some allow rule could let `client` do any destructive action (for scopes).
    pub fn allows_anything_for(&self, client: &str) -> bool {
        self.allow
            .iter()
            .any(|r| r.clients.as_ref().is_none_or(|c| c.contains(client)))
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |rules: &[Arc<Rule>]| rules.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        f.debug_struct("Policy")
            .field("dry_run", &self.dry_run)
            .field("allow", &names(&self.allow))
            .field("deny", &names(&self.deny))
            .finish()
    }
}

// === impl Rule ===

impl Rule {
    fn matches(&self, client: &str, route: &Route) -> bool {
        let owner = match &route.owner {
            Owner::Org(login) | Owner::User(login) => Some(login.to_ascii_lowercase()),
            Owner::AuthenticatedUser => None,
        };
        let package = route.package.as_ref();
        self.clients.as_ref().is_none_or(|c| c.contains(client))
            && self
                .actions
                .as_ref()
                .is_none_or(|a| a.contains(&route.operation))
            && self.owners.as_ref().is_none_or(|o| match &owner {
                Some(owner) => o.contains(owner),
                // `/user/...` acts as the token's own user, whose login the proxy does not know:
                // a deny rule naming owners covers it (fail closed), an allow rule does not.
                None => self.deny,
            })
            && self
                .package_types
                .as_ref()
                .is_none_or(|t| package.is_some_and(|p| t.contains(&p.package_type)))
            && self
                .packages
                .as_ref()
                .is_none_or(|g| package.is_some_and(|p| g.is_match(&p.name)))
    }

    /// The first protected pattern one of `tags` matches, if the rule protects tags.
    pub fn protected_tag<'a>(&self, tags: &'a [String]) -> Option<&'a str> {
        let (set, _) = self.protect.as_ref()?;
        tags.iter()
            .find(|t| set.is_match(t.as_str()))
            .map(String::as_str)
    }

    /// True when the rule protects tags (a fresh read is then needed before a delete).
    pub fn protects_tags(&self) -> bool {
        self.protect.is_some()
    }

    /// The protected patterns as written.
    pub fn protected_patterns(&self) -> &[String] {
        self.protect.as_ref().map_or(&[], |(_, p)| p.as_slice())
    }

    /// The rule's budget (`max_per_hour`), if any.
    pub fn budget(&self) -> Option<&RuleBudget> {
        self.budget.as_ref()
    }

    /// The calls each client made under this rule that its budget still counts.
    fn budget_debts(&self) -> impl Iterator<Item = BudgetDebt> + '_ {
        self.budget.iter().flat_map(move |budget| {
            budget
                .debts()
                .into_iter()
                .map(move |(client, calls)| BudgetDebt {
                    name: format!("{}:{client}", self.name),
                    capacity: budget.size(),
                    window: budget.window(),
                    calls,
                })
        })
    }

    /// True when calls this rule allows are only reported (`dry_run = true` on the rule).
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Whether the multi-arch guard runs for container deletes under this rule (default on).
    pub fn multi_arch_guard(&self) -> bool {
        self.multi_arch_guard
    }
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Clients' names as a set, for validating rules.
pub fn client_names<'a>(names: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
    names.into_iter().map(str::to_owned).collect()
}
