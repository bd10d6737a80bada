//! `Link` header rewriting, so clients paginate through the proxy and never see GitHub's URLs.
//!
//! GitHub writes pagination URLs with the owner's numeric id (`/organizations/{id}/...`,
//! `/user/{id}/...`). The proxy does not serve those forms; it maps each URL back onto the route
//! of the request that produced it (same operation and package, the upstream's query), checked by
//! the same parser that guards every request. `rel` names and `page=` numbers are kept exactly.
//! A URL on the upstream that does not map back is dropped rather than leaked.

use crate::route::{LinkOwner, Route};

/// Rewrites one `Link` header value. `upstream_base` is the upstream origin and prefix,
/// `public_base` the proxy's public URL (plus `/api/v3` if the client used it). Returns `None`
/// when no entry is left.
pub fn rewrite(
    value: &str,
    upstream_base: &str,
    public_base: &str,
    request: &Route,
) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    for (url, params) in entries(value) {
        let url = match url.strip_prefix(upstream_base) {
            Some(rest) if rest.starts_with('/') => match map_back(rest, request) {
                Some(path_and_query) => format!("{public_base}{path_and_query}"),
                None => {
                    tracing::debug!(rel = %params, "dropping a Link entry that maps to no route");
                    continue;
                }
            },
            // Not on the upstream: harmless to pass (it does not lead through the token).
            _ => url.to_owned(),
        };
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push('<');
        out.push_str(&url);
        out.push('>');
        out.push_str(params);
    }
    (!out.is_empty()).then_some(out)
}

/// Maps an upstream path and query onto the request's owner, if it names the same resource.
fn map_back(path_and_query: &str, request: &Route) -> Option<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let (mut link, id_owner) = Route::parse_link(path, query)?;
    let same_owner = match id_owner {
        // The id form always names the owner of the response it came with.
        Some(LinkOwner::OrgId(_) | LinkOwner::UserId(_)) => true,
        None => link.owner_login() == request.owner_login(),
    };
    let same_resource = link.operation == request.operation
        && link.package == request.package
        && link.version_id == request.version_id;
    if !(same_owner && same_resource) {
        return None;
    }
    link.owner = request.owner.clone();
    Some(link.path_and_query())
}

/// Splits a `Link` value into (`url`, `; rel="..."` parameters) entries.
fn entries(value: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else {
            break;
        };
        let url = &rest[open + 1..open + close];
        let after = &rest[open + close + 1..];
        let end = params_end(after);
        out.push((url, after[..end].trim_end()));
        rest = &after[end..];
    }
    out
}

/// Where an entry's parameters end: the first comma outside a quoted string.
fn params_end(params: &str) -> usize {
    let mut quoted = false;
    for (i, c) in params.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => return i,
            _ => {}
        }
    }
    params.len()
}
