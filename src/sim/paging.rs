//! Query parameters, pagination and the `Link` header.
//!
//! GitHub writes `Link` URLs with the owner's numeric id (`/organizations/{id}/...` for orgs,
//! `/user/{id}/...` for users), keeps the request's other query parameters in order, and puts
//! `page` last. Relations come in GitHub's order: prev, next, last, first.

use percent_encoding::percent_decode_str;

/// `per_page` when the request gives none.
const DEFAULT_PER_PAGE: usize = 30;
/// Larger `per_page` values are clamped to this.
const MAX_PER_PAGE: usize = 100;

/// The request's query string, split into raw (still encoded) pairs.
#[derive(Debug, Default)]
pub(super) struct Query {
    pairs: Vec<(String, String)>,
}

/// Which slice of a list to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Page {
    /// 1-based page number.
    pub(super) page: usize,
    pub(super) per_page: usize,
}

// === impl Query ===

impl Query {
    /// Splits a raw query string (`a=1&b=2`).
    pub(super) fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (pair.to_owned(), String::new()),
            })
            .collect();
        Self { pairs }
    }

    /// The decoded value of the first parameter named `key`.
    pub(super) fn get(&self, key: &str) -> Option<String> {
        self.pairs
            .iter()
            .find(|(k, _)| decode(k) == key)
            .map(|(_, v)| decode(v))
    }

    /// `page` and `per_page` with GitHub's defaults and clamping; junk values mean the default.
    pub(super) fn page(&self) -> Page {
        let number = |key| {
            self.get(key)
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| *n > 0)
        };
        Page {
            page: number("page").unwrap_or(1),
            per_page: number("per_page").map_or(DEFAULT_PER_PAGE, |n| n.min(MAX_PER_PAGE)),
        }
    }

    /// The query for another page: every parameter but `page`, then `page=N`.
    fn with_page(&self, page: usize) -> String {
        let mut out = String::new();
        for (k, v) in self.pairs.iter().filter(|(k, _)| decode(k) != "page") {
            out.push_str(k);
            out.push('=');
            out.push_str(v);
            out.push('&');
        }
        out.push_str(&format!("page={page}"));
        out
    }
}

// === impl Page ===

impl Page {
    /// The items of `items` on this page (empty past the end).
    pub(super) fn slice<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        let start = (self.page - 1)
            .saturating_mul(self.per_page)
            .min(items.len());
        let end = start.saturating_add(self.per_page).min(items.len());
        &items[start..end]
    }

    /// Whether `page * per_page` is over GitHub's 10 000 cap for package lists.
    pub(super) fn over_package_list_cap(&self) -> bool {
        self.page.saturating_mul(self.per_page) > 10_000
    }
}

/// The `Link` header for `total` items, or `None` when they fit on one page and this is page 1.
/// `url` is the absolute URL of the list without its query.
pub(super) fn link(url: &str, query: &Query, page: Page, total: usize) -> Option<String> {
    let last = total.div_ceil(page.per_page).max(1);
    if last == 1 && page.page == 1 {
        return None;
    }
    let rel = |n: usize, rel: &str| format!("<{url}?{}>; rel=\"{rel}\"", query.with_page(n));
    let mut links = Vec::with_capacity(4);
    if page.page > 1 {
        links.push(rel(page.page - 1, "prev"));
    }
    if page.page < last {
        links.push(rel(page.page + 1, "next"));
        links.push(rel(last, "last"));
    }
    if page.page > 1 {
        links.push(rel(1, "first"));
    }
    Some(links.join(", "))
}

/// Decodes a form-encoded query component (`+` is a space).
fn decode(raw: &str) -> String {
    percent_decode_str(&raw.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_default_and_clamp() {
        assert_eq!(
            Query::parse(None).page(),
            Page {
                page: 1,
                per_page: 30
            }
        );
        let q = Query::parse(Some("per_page=500&page=3"));
        assert_eq!(
            q.page(),
            Page {
                page: 3,
                per_page: 100
            }
        );
        assert_eq!(Query::parse(Some("per_page=x&page=0")).page().page, 1);
    }

    #[test]
    fn link_keeps_params_and_puts_page_last() {
        let q = Query::parse(Some("page=2&package_type=container&per_page=100"));
        let header = link("http://h/organizations/1/packages", &q, q.page(), 250).unwrap();
        assert_eq!(
            header,
            "<http://h/organizations/1/packages?package_type=container&per_page=100&page=1>; \
             rel=\"prev\", \
             <http://h/organizations/1/packages?package_type=container&per_page=100&page=3>; \
             rel=\"next\", \
             <http://h/organizations/1/packages?package_type=container&per_page=100&page=3>; \
             rel=\"last\", \
             <http://h/organizations/1/packages?package_type=container&per_page=100&page=1>; \
             rel=\"first\""
        );
        let q = Query::parse(None);
        assert_eq!(link("u", &q, q.page(), 30), None);
    }
}
