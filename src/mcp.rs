//! What a gateway knows about an MCP upstream's tools: the annotations its
//! `tools/list` replies give, shared through the [store](palisade_store)
//! so every replica agrees (one that never saw a list reads what another
//! learned), overridden by `[mcp.tools.NAME]` (see
//! [`McpSection`]). A gateway asks it for the
//! [`ToolFacts`] of each `tools/call` and sets them as a request extension,
//! with their [`Idempotency`](palisade_core::Idempotency): the retry layer
//! and the tool-result cache act on those.
//!
//! # Example
//!
//! ```
//! use palisade::config::PalisadeConfig;
//! use palisade::mcp::ToolCatalog;
//! use palisade_core::Idempotency;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cfg = PalisadeConfig::from_sources(Some("[mcp.tools.plain]\nidempotent = true"), [("", ""); 0]).unwrap();
//! let store = palisade::store::Store::in_memory();
//! let catalog = ToolCatalog::new(&cfg.mcp, "http://tools.internal", store.clone());
//! let list = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[
//!     {"name":"search","inputSchema":{},"annotations":{"readOnlyHint":true}},
//!     {"name":"plain","inputSchema":{}}]}}"#;
//! catalog.learn_list(list).await;
//! let search = catalog.facts("search").await;
//! assert_eq!(search.cacheable_for(), Some(std::time::Duration::from_secs(60)));
//! assert_eq!(catalog.facts("plain").await.idempotency(), Idempotency::Idempotent);
//! assert_eq!(catalog.facts("unknown").await.idempotency(), Idempotency::NotIdempotent);
//!
//! // Another replica on the same store knows it too.
//! let replica = ToolCatalog::new(&cfg.mcp, "http://tools.internal", store);
//! assert!(replica.facts("search").await.annotations.is_read_only());
//! # }
//! ```

use crate::config::McpSection;
use bytes::Bytes;
use palisade_core::mcp::{ToolAnnotations, ToolFacts, tools_in_list};
use palisade_store::Store;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long learned annotations stay in the store without a new list.
const LEARNED_TTL: Duration = Duration::from_secs(24 * 3600);

/// What the configuration says of one tool.
#[derive(Debug)]
struct Override {
    annotations: ToolAnnotations,
    ttl: Option<Duration>,
    budget: Option<u64>,
}

/// The annotations of one upstream's tools (cheap to clone).
#[derive(Clone, Debug)]
pub struct ToolCatalog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    upstream: String,
    learn: bool,
    default_ttl: Duration,
    default_budget: u64,
    overrides: HashMap<String, Override>,
    learned: RwLock<HashMap<String, ToolAnnotations>>,
    store: Store,
}

impl ToolCatalog {
    /// A catalog of `upstream`'s tools (the name keys it in the store), with
    /// `section`'s overrides and TTLs, shared through `store`.
    pub fn new(section: &McpSection, upstream: impl Into<String>, store: Store) -> Self {
        Self {
            inner: Arc::new(Inner {
                upstream: upstream.into(),
                learn: section.learn_annotations,
                default_ttl: section.cache_ttl,
                default_budget: section.max_output_tokens,
                overrides: section
                    .tools
                    .iter()
                    .map(|(name, t)| {
                        (
                            name.clone(),
                            Override {
                                annotations: t.annotations(),
                                ttl: t.cache_ttl,
                                budget: t.max_output_tokens,
                            },
                        )
                    })
                    .collect(),
                learned: RwLock::new(HashMap::new()),
                store,
            }),
        }
    }

    fn key(&self, tool: &str) -> String {
        self.inner.store.key(
            "mcp",
            "tool",
            &format!("{} {tool}", self.inner.upstream),
            "v1",
        )
    }

    /// Learns the tools of a `tools/list` reply `message` (a page of it:
    /// tools already known keep theirs); returns how many it listed
    /// (`None`: not a list, or learning is off). A store that fails is
    /// logged: this replica still knows.
    pub async fn learn_list(&self, message: &[u8]) -> Option<usize> {
        let tools = self.learn_here(message)?;
        self.share(&tools).await;
        Some(tools.len())
    }

    /// The part of [`learn_list`](Self::learn_list) that needs no store:
    /// this replica knows the tools at once (before the list reaches the
    /// client); [`share`](Self::share) them next.
    pub fn learn_here(&self, message: &[u8]) -> Option<Vec<(String, ToolAnnotations)>> {
        if !self.inner.learn {
            return None;
        }
        let tools = tools_in_list(message)?;
        {
            let mut learned = self
                .inner
                .learned
                .write()
                .unwrap_or_else(|e| e.into_inner());
            for (name, annotations) in &tools {
                learned.insert(name.clone(), *annotations);
            }
        }
        Some(tools)
    }

    /// Shares learned tools with the other replicas, through the store.
    pub async fn share(&self, tools: &[(String, ToolAnnotations)]) {
        for (name, annotations) in tools {
            let value = match serde_json::to_vec(annotations) {
                Ok(v) => Bytes::from(v),
                Err(_) => continue,
            };
            if let Err(err) = self
                .inner
                .store
                .set(&self.key(name), value, Some(LEARNED_TTL))
                .await
            {
                tracing::warn!(tool = %name, %err, "could not share a tool's annotations");
            }
        }
    }

    /// What is known of `tool`: learned here or by another replica (from
    /// the store), then overridden by the configuration; MCP's defaults
    /// (not read-only, destructive) for a tool nobody described.
    pub async fn facts(&self, tool: &str) -> ToolFacts {
        let local = self
            .inner
            .learned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tool)
            .copied();
        let learned = match local {
            Some(a) => a,
            None if self.inner.learn => match self.inner.store.get(&self.key(tool)).await {
                Ok(Some(bytes)) => match serde_json::from_slice::<ToolAnnotations>(&bytes) {
                    Ok(a) => {
                        self.inner
                            .learned
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(tool.to_owned(), a);
                        a
                    }
                    Err(_) => ToolAnnotations::default(),
                },
                Ok(None) => ToolAnnotations::default(),
                Err(err) => {
                    tracing::warn!(%tool, %err, "could not read a tool's annotations");
                    ToolAnnotations::default()
                }
            },
            None => ToolAnnotations::default(),
        };
        let (annotations, ttl, budget) = match self.inner.overrides.get(tool) {
            Some(over) => (
                learned.overridden_by(&over.annotations),
                over.ttl,
                over.budget,
            ),
            None => (learned, None, None),
        };
        let budget = budget.unwrap_or(self.inner.default_budget);
        ToolFacts::new(annotations)
            .cache_ttl(ttl.unwrap_or(self.inner.default_ttl))
            .output_budget((budget > 0).then_some(budget))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PalisadeConfig;

    #[tokio::test]
    async fn configuration_overrides_what_the_server_says() {
        let cfg = PalisadeConfig::from_sources(
            Some(
                r#"
                [mcp]
                cache_ttl = "10s"
                [mcp.tools.search]
                read_only = false
                [mcp.tools.lookup]
                read_only = true
                cache_ttl = "0s"
                max_output_tokens = 500
                "#,
            ),
            [("", ""); 0],
        )
        .unwrap();
        let catalog = ToolCatalog::new(&cfg.mcp, "up", Store::in_memory());
        let list = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[
            {"name":"search","annotations":{"readOnlyHint":true}},
            {"name":"fetch","annotations":{"readOnlyHint":true}}]}}"#;
        assert_eq!(catalog.learn_list(list).await, Some(2));
        let search = catalog.facts("search").await;
        assert!(!search.annotations.is_read_only());
        assert_eq!(search.cacheable_for(), None);
        assert_eq!(
            catalog.facts("fetch").await.cacheable_for(),
            Some(Duration::from_secs(10))
        );
        // Read-only by configuration, never cached by its own TTL.
        let lookup = catalog.facts("lookup").await;
        assert!(lookup.annotations.is_retry_safe());
        assert_eq!(lookup.cacheable_for(), None);
        assert_eq!(lookup.output_budget, Some(500));
        assert_eq!(search.output_budget, None, "off by default");
    }

    #[tokio::test]
    async fn learning_can_be_turned_off() {
        let cfg =
            PalisadeConfig::from_sources(Some("[mcp]\nlearn_annotations = false"), [("", ""); 0])
                .unwrap();
        let catalog = ToolCatalog::new(&cfg.mcp, "up", Store::in_memory());
        let list = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","annotations":{"readOnlyHint":true}}]}}"#;
        assert_eq!(catalog.learn_list(list).await, None);
        assert!(!catalog.facts("a").await.annotations.is_read_only());
    }
}
