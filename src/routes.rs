//! Matching a request to its `[[routes]]` entry: once per request, by
//! whoever sees it first (the gateway's front door), and put in the
//! request's extensions as a [`Route`] for every layer below to read its
//! policies from.
//!
//! The longest `path_prefix` that the path starts with wins; a request
//! matching no route has no [`Route`] and gets the top-level policies.
//!
//! ```
//! use palisade::config::RouteSection;
//! use palisade::routes::{Route, RouteTable};
//! use std::time::Duration;
//!
//! let table = RouteTable::new(&[
//!     RouteSection::new("/v1/").response_timeout(Duration::from_secs(10)),
//!     RouteSection::new("/v1/chat/").response_timeout(Duration::from_secs(120)),
//! ]);
//! let mut req = http::Request::get("/v1/chat/completions").body(()).unwrap();
//! table.route(&mut req);
//! // Later, in any layer:
//! let route = Route::of(&req).expect("matched");
//! assert_eq!(route.index(), 1, "the longest prefix wins");
//! assert_eq!(route.section().response_timeout, Some(Duration::from_secs(120)));
//!
//! assert_eq!(table.lookup("/v1/models").map(Route::index), Some(0));
//! assert!(table.lookup("/health").is_none(), "the top-level policies");
//! ```

use crate::config::RouteSection;
use std::sync::Arc;

/// The `[[routes]]` entry a request matched, in its extensions (cheap to
/// clone: retries copy the request's extensions).
#[derive(Clone, Debug)]
pub struct Route {
    index: usize,
    section: Arc<RouteSection>,
}

impl Route {
    /// Its place in `[[routes]]` (`routes[index]`), for messages and
    /// metric labels.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its policies.
    pub fn section(&self) -> &RouteSection {
        &self.section
    }

    /// The route `req` was matched to by [`RouteTable::route`], if any.
    pub fn of<B>(req: &http::Request<B>) -> Option<&Route> {
        req.extensions().get::<Route>()
    }
}

/// Every configured route, matched by longest path prefix.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Longest prefix first, so the first match is the longest.
    routes: Arc<[Route]>,
}

impl RouteTable {
    /// The table of `routes` (`[[routes]]`, already validated by
    /// [`PalisadeConfig`](crate::config::PalisadeConfig)).
    pub fn new(routes: &[RouteSection]) -> Self {
        let mut sorted: Vec<Route> = routes
            .iter()
            .enumerate()
            .map(|(index, section)| Route {
                index,
                section: Arc::new(section.clone()),
            })
            .collect();
        // Stable: of two equal prefixes (refused by the configuration's
        // checks), the first listed would win.
        sorted.sort_by(|a, b| {
            b.section
                .path_prefix
                .len()
                .cmp(&a.section.path_prefix.len())
        });
        Self {
            routes: sorted.into(),
        }
    }

    /// No route configured.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route of `path`: the longest prefix it starts with.
    pub fn lookup(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| path.starts_with(r.section.path_prefix.as_str()))
    }

    /// Matches `req` by its path and puts the [`Route`] in its extensions
    /// (replacing any there); returns it.
    pub fn route<B>(&self, req: &mut http::Request<B>) -> Option<Route> {
        let route = self.lookup(req.uri().path())?.clone();
        req.extensions_mut().insert(route.clone());
        Some(route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_wins_whatever_the_order() {
        let table = RouteTable::new(&[
            RouteSection::new("/a/b/c"),
            RouteSection::new("/"),
            RouteSection::new("/a/"),
        ]);
        let index = |path: &str| table.lookup(path).map(Route::index);
        assert_eq!(index("/a/b/c/d"), Some(0));
        assert_eq!(index("/a/b/x"), Some(2));
        assert_eq!(index("/b"), Some(1));
        let none = RouteTable::new(&[RouteSection::new("/a/")]);
        assert!(none.lookup("/b").is_none());
        assert!(RouteTable::default().is_empty());
    }

    #[test]
    fn a_request_without_a_route_gets_no_extension() {
        let table = RouteTable::new(&[RouteSection::new("/a/")]);
        let mut req = http::Request::get("/b").body(()).unwrap();
        assert!(table.route(&mut req).is_none());
        assert!(Route::of(&req).is_none());
    }
}
