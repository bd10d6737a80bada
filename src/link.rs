//! `Link` header rewriting, so clients paginate through the proxy and never see GitHub's URLs.
//!
//! GitHub writes pagination URLs with the owner's numeric id (`/organizations/{id}/...`,
//! `/user/{id}/...`). The proxy does not serve those forms; it maps each URL back onto the route
//! of the request that produced it (same operation and package, the upstream's query), checked by
//! the same parser that guards every request. `rel` names and `page=` numbers are kept exactly.
//! Every other entry is dropped rather than passed on: a URL on the upstream that does not map
//! back, and any URL that does not point into the upstream API at all (another host, another
//! scheme, `javascript:`, `//host/x`, userinfo tricks).

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
        let Some(path_and_query) =
            on_upstream(url, upstream_base).and_then(|r| map_back(r, request))
        else {
            // Another host, another scheme, `javascript:`, a userinfo trick, or a route of
            // another resource: passing it on would send clients (and their tokens) elsewhere.
            tracing::debug!(rel = %params, "dropping a Link entry that maps to no route");
            continue;
        };
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push('<');
        out.push_str(public_base);
        out.push_str(&path_and_query);
        out.push('>');
        out.push_str(params);
    }
    (!out.is_empty()).then_some(out)
}

/// The path and query of `url` if it points into the upstream API: it starts with the upstream
/// base (scheme, host, port and prefix, exactly) followed by a path. `https://api.github.com@evil/`,
/// `https://api.github.com.evil/`, `//host/x` and other schemes do not; nor does a path that
/// starts with `//`, which a client could read as a new authority.
pub(crate) fn on_upstream<'u>(url: &'u str, upstream_base: &str) -> Option<&'u str> {
    let rest = url.strip_prefix(upstream_base)?;
    (rest.starts_with('/') && !rest.starts_with("//")).then_some(rest)
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

#[cfg(test)]
mod tests {
    use http::Method;

    use super::rewrite;
    use crate::route::Route;

    const UPSTREAM: &str = "https://api.github.com";
    const PUBLIC: &str = "https://proxy.example";
    const TAIL: &str = "/packages/container/web/versions?per_page=10&page=2";

    fn request() -> Route {
        let path = "/orgs/acme/packages/container/web/versions";
        Route::parse(&Method::GET, path, Some("per_page=10")).unwrap()
    }

    // Guards issue 14: entries that did not start with the upstream base were passed on as
    // "harmless"; a client paginating would follow them off to another host with its token.
    #[test]
    fn only_entries_into_the_upstream_api_survive() {
        let kept = [
            format!("{UPSTREAM}/organizations/9919{TAIL}"),
            format!("{UPSTREAM}/orgs/acme{TAIL}"),
            format!("{UPSTREAM}/orgs/ACME{TAIL}"),
        ];
        let dropped = [
            format!("https://evil.example/orgs/acme{TAIL}"),
            format!("http://api.github.com/orgs/acme{TAIL}"),
            format!("ftp://api.github.com/orgs/acme{TAIL}"),
            format!("//evil.example/orgs/acme{TAIL}"),
            format!("//api.github.com/orgs/acme{TAIL}"),
            format!("/orgs/acme{TAIL}"),
            format!("https://api.github.com@evil.example/orgs/acme{TAIL}"),
            format!("https://api.github.com:443@evil.example/orgs/acme{TAIL}"),
            format!("https://api.github.com.evil.example/orgs/acme{TAIL}"),
            format!("https://api.github.com\\@evil.example/orgs/acme{TAIL}"),
            format!("https://api.github.com//evil.example/orgs/acme{TAIL}"),
            format!("{UPSTREAM}/orgs/other{TAIL}"),
            format!("{UPSTREAM}/orgs/acme/packages/container/other/versions?page=2"),
            "javascript:alert(document.cookie)".to_owned(),
            "data:text/html,<script>alert(1)</script>".to_owned(),
            String::new(),
        ];
        for url in &kept {
            let value = format!("<{url}>; rel=\"next\"");
            let out = rewrite(&value, UPSTREAM, PUBLIC, &request());
            let out = out.unwrap_or_else(|| panic!("{url} was dropped"));
            assert!(
                out.starts_with("<https://proxy.example/orgs/acme/"),
                "{url}: {out}"
            );
            assert!(out.ends_with(">; rel=\"next\""), "{url}: {out}");
            assert!(
                out.contains("page=2") && !out.contains("github.com"),
                "{out}"
            );
        }
        for url in &dropped {
            let value = format!("<{url}>; rel=\"next\"");
            assert_eq!(rewrite(&value, UPSTREAM, PUBLIC, &request()), None, "{url}");
            // Beside a good entry, only the good one is left.
            let good = format!("<{}>; rel=\"last\"", kept[0]);
            let mixed = format!("{value}, {good}");
            let out = rewrite(&mixed, UPSTREAM, PUBLIC, &request()).unwrap();
            assert!(!out.contains("rel=\"next\""), "{url}: {out}");
            assert!(out.contains("rel=\"last\""), "{url}: {out}");
        }
    }
}
