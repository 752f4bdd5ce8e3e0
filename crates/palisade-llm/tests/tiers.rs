//! Token budgets per tier: a request's `Tier` extension picks its tier's
//! budget; requests without one (or of a tier not configured) get the
//! layer's own; metrics carry the tier.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use palisade_core::{key::ConstKey, tier::Tier};
use palisade_llm::{TokenBudgetLayer, TokenMetrics};
use palisade_store::{Store, TokenRule};
use tower::{ServiceBuilder, ServiceExt};

/// A call that reserves ceil(8 / 4) = 2 prompt tokens plus 18 of output
/// (20 in all) and is charged the 20 its usage says.
fn ask(tier: Option<Tier>) -> http::Request<Full<Bytes>> {
    let body = r#"{"max_tokens":18,"messages":[{"role":"user","content":"12345678"}]}"#;
    let mut req = http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    if let Some(t) = tier {
        req.extensions_mut().insert(t);
    }
    req
}

#[tokio::test]
async fn each_tier_has_its_budget_and_the_rest_share_the_default() {
    let registry = prometheus::Registry::new();
    let metrics = TokenMetrics::register(&registry).unwrap();
    let layer = TokenBudgetLayer::builder(
        Store::in_memory(),
        ConstKey("one-user"),
        TokenRule::per_day(40),
    )
    .tier(Tier::PREMIUM, TokenRule::per_day(100))
    .metrics(&metrics)
    .build()
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: http::Request<_>| async {
            let body = r#"{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":18}}"#;
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
        });
    let mut statuses = Vec::new();
    for tier in [
        None,
        None,
        None,
        Some(Tier::new("gold")),
        Some(Tier::PREMIUM),
        Some(Tier::PREMIUM),
        Some(Tier::PREMIUM),
    ] {
        let res = svc.clone().oneshot(ask(tier)).await.unwrap();
        let status = res.status().as_u16();
        if status == 200 {
            let policy = res.headers()["ratelimit-policy"]
                .to_str()
                .unwrap()
                .to_owned();
            res.into_body().collect().await.unwrap();
            // The settle runs on the runtime: let it finish.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            statuses.push((status, policy));
        } else {
            statuses.push((status, String::new()));
        }
    }
    let default_policy = r#""tokens";q=40;qu="tokens";w=86400"#.to_owned();
    let premium_policy = r#""tokens";q=100;qu="tokens";w=86400"#.to_owned();
    // 40 by default (two calls of 20; "gold" is not a configured tier),
    // 100 on premium's own ledger.
    assert_eq!(
        statuses,
        [
            (200, default_policy.clone()),
            (200, default_policy),
            (429, String::new()),
            (429, String::new()),
            (200, premium_policy.clone()),
            (200, premium_policy.clone()),
            (200, premium_policy),
        ]
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    for line in [
        r#"palisade_llm_tokens_total{event="charged",limit="tokens",tier="default"} 40"#,
        r#"palisade_llm_tokens_total{event="charged",limit="tokens",tier="premium"} 60"#,
        r#"palisade_llm_tokens_total{event="refused",limit="tokens",tier="default"} 40"#,
    ] {
        assert!(text.contains(line), "no {line} in:\n{text}");
    }
}

#[test]
fn a_bad_tier_rule_is_named() {
    let err = TokenBudgetLayer::builder(Store::in_memory(), ConstKey("k"), TokenRule::per_day(40))
        .tier(Tier::FREE, TokenRule::per_day(0))
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(r#"tier "free": quota must be at least 1"#),
        "{err}"
    );
}
