//! Query parameters: only those the operation defines (paging where it has none is accepted
//! and dropped, as GitHub ignores it), with validated values, re-encoded in a fixed order.

use super::{Operation, PackageType};
use crate::error::ProxyError;

/// GitHub answers package lists with 400 past this many items.
const MAX_PAGE_WINDOW: u64 = 10_000;
/// GitHub's documented `per_page` maximum; larger values are clamped, as GitHub does.
const MAX_PER_PAGE: u32 = 100;

/// Validated query parameters; only those the operation defines can be set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Query {
    /// `package_type` (package lists; required there).
    pub package_type: Option<PackageType>,
    /// `visibility`: public, private or internal.
    pub visibility: Option<&'static str>,
    /// `state`: active or deleted (version lists).
    pub state: Option<&'static str>,
    /// `page`, 1-based.
    pub page: Option<u32>,
    /// `per_page`, clamped to 100.
    pub per_page: Option<u32>,
    /// `token` on package restore: a secret, never logged or cached.
    pub restore_token: Option<String>,
}

// === impl Query ===

impl Query {
    pub(super) fn parse(operation: Operation, raw: Option<&str>) -> Result<Self, ProxyError> {
        let mut query = Self::default();
        let raw = raw.unwrap_or("");
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            query.set(operation, key, value)?;
        }
        if operation == Operation::ListPackages && query.package_type.is_none() {
            return Err(bad("Missing required query parameter: package_type"));
        }
        if operation == Operation::ListPackages {
            let window =
                u64::from(query.page.unwrap_or(1)) * u64::from(query.per_page.unwrap_or(30));
            if window > MAX_PAGE_WINDOW {
                return Err(bad("page * per_page must not exceed 10000"));
            }
        }
        Ok(query)
    }

    fn set(&mut self, operation: Operation, key: &str, value: &str) -> Result<(), ProxyError> {
        use Operation::*;
        let lists = matches!(operation, ListPackages | ListVersions);
        match key {
            "package_type" if operation == ListPackages => {
                let ty = PackageType::parse(value).ok_or_else(|| invalid(key))?;
                set_once(&mut self.package_type, ty, key)
            }
            "visibility" if operation == ListPackages => {
                let v = one_of(value, &["public", "private", "internal"])
                    .ok_or_else(|| invalid(key))?;
                set_once(&mut self.visibility, v, key)
            }
            "state" if operation == ListVersions => {
                let v = one_of(value, &["active", "deleted"]).ok_or_else(|| invalid(key))?;
                set_once(&mut self.state, v, key)
            }
            "page" if lists => {
                let page = positive(value).ok_or_else(|| invalid(key))?;
                set_once(&mut self.page, page, key)
            }
            "per_page" if lists => {
                let per_page = positive(value)
                    .ok_or_else(|| invalid(key))?
                    .min(MAX_PER_PAGE);
                set_once(&mut self.per_page, per_page, key)
            }
            // GitHub ignores paging on an operation that has none, and clients add it to every
            // GET they page through (`gh api --paginate`, Octokit's `paginate` with `per_page`):
            // accepted, never sent, not in the cache key.
            "page" | "per_page" => Ok(()),
            "token" if operation == RestorePackage => {
                let ok = !value.is_empty()
                    && value.len() <= 512
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
                if !ok {
                    return Err(invalid(key));
                }
                set_once(&mut self.restore_token, value.to_owned(), key)
            }
            _ => Err(bad(&format!(
                "Unknown query parameter for this endpoint: {}",
                printable(key)
            ))),
        }
    }

    /// The query as sent upstream: a fixed order, only the parameters that were given.
    pub fn encode(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(ty) = self.package_type {
            parts.push(format!("package_type={ty}"));
        }
        if let Some(v) = self.visibility {
            parts.push(format!("visibility={v}"));
        }
        if let Some(v) = self.state {
            parts.push(format!("state={v}"));
        }
        if let Some(v) = self.per_page {
            parts.push(format!("per_page={v}"));
        }
        if let Some(v) = self.page {
            parts.push(format!("page={v}"));
        }
        if let Some(v) = &self.restore_token {
            parts.push(format!("token={v}"));
        }
        parts.join("&")
    }
}

fn positive(value: &str) -> Option<u32> {
    if value.is_empty() || value.len() > 9 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|v| *v > 0)
}

fn one_of(value: &str, options: &[&'static str]) -> Option<&'static str> {
    options.iter().copied().find(|o| *o == value)
}

fn set_once<T>(slot: &mut Option<T>, value: T, key: &str) -> Result<(), ProxyError> {
    if slot.is_some() {
        return Err(bad(&format!("Query parameter given twice: {key}")));
    }
    *slot = Some(value);
    Ok(())
}

fn bad(message: &str) -> ProxyError {
    ProxyError::BadRequest(message.to_owned())
}

fn invalid(key: &str) -> ProxyError {
    bad(&format!("Invalid value for query parameter: {key}"))
}

/// A query key echoed in an error: only printable ASCII, at most 40 characters.
fn printable(key: &str) -> String {
    key.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(40)
        .collect()
}
