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
/// when no entry is left, and for a value that is not a well-formed `Link` (RFC 8288): text
/// outside the grammar could hide a second URL that a client's pattern finds.
///
/// An entry is written anew, `<url>; rel="..."`: only its `rel` is kept, as a plain list of
/// relation names. The upstream's parameter text is never copied: a parameter (quoted or not)
/// could carry a `<https://elsewhere>; rel="next"` of its own.
pub fn rewrite(
    value: &str,
    upstream_base: &str,
    public_base: &str,
    request: &Route,
) -> Option<String> {
    let Some(entries) = entries(value) else {
        tracing::debug!("dropping a Link header that is not well-formed");
        return None;
    };
    let mut out = String::with_capacity(value.len());
    for Entry { url, rel } in entries {
        let Some(rel) = rel else { continue };
        let Some(path_and_query) =
            on_upstream(url, upstream_base).and_then(|r| map_back(r, request))
        else {
            // Another host, another scheme, `javascript:`, a userinfo trick, or a route of
            // another resource: passing it on would send clients (and their tokens) elsewhere.
            tracing::debug!(%rel, "dropping a Link entry that maps to no route");
            continue;
        };
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push('<');
        out.push_str(public_base);
        out.push_str(&path_and_query);
        out.push_str(">; rel=\"");
        let start = out.len();
        out.push_str(rel);
        out[start..].make_ascii_lowercase();
        out.push('"');
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

/// One `Link` entry: its URL, and its `rel` if it has one made of plain relation names.
struct Entry<'a> {
    url: &'a str,
    rel: Option<&'a str>,
}

/// Parses a `Link` value (RFC 8288: `<url> *( ";" param )`, entries separated by commas,
/// `param = token [ "=" ( token / quoted-string ) ]`); `None` if any of it is outside that.
fn entries(value: &str) -> Option<Vec<Entry<'_>>> {
    let mut out = Vec::new();
    let mut rest = value.trim_start_matches(OWS);
    while !rest.is_empty() {
        // Empty list elements are allowed (RFC 9110, 5.6.1): `a, , b`, or an empty line joined.
        if let Some(next) = rest.strip_prefix(',') {
            rest = next.trim_start_matches(OWS);
            continue;
        }
        let after_open = rest.strip_prefix('<')?;
        let close = after_open.find('>')?;
        let url = &after_open[..close];
        if url.contains('<') {
            return None;
        }
        rest = &after_open[close + 1..];
        let mut rel = None;
        loop {
            rest = rest.trim_start_matches(OWS);
            if let Some(next) = rest.strip_prefix(';') {
                let (name, param_value, after) = param(next.trim_start_matches(OWS))?;
                if name.eq_ignore_ascii_case("rel") && rel.is_none() {
                    // Only the first `rel` counts (RFC 8288, 3.3); a list of plain names.
                    rel = param_value.filter(|v| is_relation_list(v));
                }
                rest = after;
                continue;
            }
            break;
        }
        out.push(Entry { url, rel });
        match rest.strip_prefix(',') {
            Some(next) => rest = next.trim_start_matches(OWS),
            None if rest.is_empty() => break,
            None => return None,
        }
    }
    Some(out)
}

const OWS: [char; 2] = [' ', '\t'];

/// One parameter at the start of `text`: its name, its value (unquoted; `None` without one),
/// and the text after it. `None` if it is not a parameter.
fn param(text: &str) -> Option<(&str, Option<&str>, &str)> {
    let name_end = text.find(|c: char| !is_tchar(c)).unwrap_or(text.len());
    if name_end == 0 {
        return None;
    }
    let (name, rest) = text.split_at(name_end);
    let Some(rest) = rest.trim_start_matches(OWS).strip_prefix('=') else {
        return Some((name, None, rest));
    };
    let rest = rest.trim_start_matches(OWS);
    if let Some(quoted) = rest.strip_prefix('"') {
        // A quoted-string; an escaped character makes it no plain relation list anyway, so a
        // value holding one is returned as it is written (and then not kept).
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => return Some((name, Some(&quoted[..i]), &quoted[i + 1..])),
                _ => {}
            }
        }
        return None; // unterminated
    }
    let end = rest.find(|c: char| !is_tchar(c)).unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    Some((name, Some(&rest[..end]), &rest[end..]))
}

/// RFC 9110's `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// `rel` values the proxy passes on: relation names (`next`, `last`, ...) separated by spaces,
/// in any case (they compare case-insensitively, RFC 8288, 2.1.1; written in lower case).
fn is_relation_list(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" .-".contains(&b))
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
            // Beside a good entry, only the good one is left; a URL holding `<` or `>` is no
            // well-formed value at all, and nothing is left.
            let good = format!("<{}>; rel=\"last\"", kept[0]);
            let mixed = format!("{value}, {good}");
            let out = rewrite(&mixed, UPSTREAM, PUBLIC, &request());
            if url.contains(['<', '>']) {
                assert_eq!(out, None, "{url}");
                continue;
            }
            let out = out.unwrap();
            assert!(!out.contains("rel=\"next\""), "{url}: {out}");
            assert!(out.contains("rel=\"last\""), "{url}: {out}");
        }
    }

    // Found by a hostile review: an entry's parameter text was copied as it came, so a second
    // URL hidden in it (or after it, without a comma) reached clients, and Octokit's pattern for
    // `rel="next"` followed it off to another host with the client's token.
    #[test]
    fn no_url_hidden_in_or_after_an_entrys_parameters_survives() {
        let good = format!("<{UPSTREAM}/orgs/acme{TAIL}>");
        let evil = "<https://evil.example/steal>; rel=\"next\"";
        for value in [
            format!("{good}; rel=\"prev\"; {evil}"),
            format!("{good}; rel=\"prev\" {evil}"),
            format!("{good}; a={evil}"),
            format!("{good}; a=\"x{evil}"),
            format!("{good}; a=\"x\\\"{evil}\""),
            format!("{good}; rel={evil}"),
            format!("{good}; rel=\"prev {evil}\""),
            format!("{good}; title=\"{evil}\"; rel=\"prev\""),
            format!("{good}; rel=\"prev\"x, {evil}"),
        ] {
            let out = rewrite(&value, UPSTREAM, PUBLIC, &request());
            if let Some(out) = &out {
                assert!(!out.contains("evil"), "{value} -> {out}");
                assert_eq!(out.matches('<').count(), 1, "{value} -> {out}");
                assert!(!out.contains("rel=\"next\""), "{value} -> {out}");
            }
        }
        // A well-formed value keeps its relations, written anew (empty list elements and the
        // case of a relation name are nothing wrong).
        let value = format!(", {good}; rel=\"Next\" ; title=\"a, b\",, {good};rel=last,");
        let out = rewrite(&value, UPSTREAM, PUBLIC, &request()).unwrap();
        let page =
            "https://proxy.example/orgs/acme/packages/container/web/versions?per_page=10&page=2";
        assert_eq!(
            out,
            format!("<{page}>; rel=\"next\", <{page}>; rel=\"last\"")
        );
    }
}
