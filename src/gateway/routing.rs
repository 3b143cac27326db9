//! Where a chat request goes: one named model, or for `model: "auto"` the classifier's tier,
//! an inline override, the principal's policy, and the ordered fallback candidates.
//! The decisions are `filters::route`'s; this module applies them to the configured providers.

use super::provider_keys::KeyChoice;
use super::runtime::{Principal, ProxyPolicy, Runtime};
use crate::upstream::Provider;
use bytes::Bytes;
use filters::model::Target;
use filters::route::overrides::take_override;
use filters::route::policy::{decide, DecideError};
use filters::route::Tier;
use filters::ApiError;
use std::sync::Arc;

/// Why `auto` chose what it chose; sent as `x-portcullis-*` headers and logged.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// The tier routed to (after override and policy).
    pub tier: Tier,
    /// The classifier's score and its own tier.
    pub score: f32,
    pub classified: Tier,
    /// The tier an inline override asked for.
    pub override_tier: Option<Tier>,
    /// The policy lowered (or moved) the tier.
    pub policy_capped: bool,
}

/// One provider and model to try.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub provider: Arc<Provider>,
    /// The model the upstream sees.
    pub model: String,
    /// The tier it serves (`auto` only).
    pub tier: Option<Tier>,
    /// The key to call it with.
    pub key: KeyChoice,
}

/// A routed request: the candidates, best first, and the body to send instead of the client's
/// when an inline override was stripped from it.
pub struct Routed {
    pub rewritten: Option<Bytes>,
    pub targets: Vec<Candidate>,
    pub info: Option<RouteInfo>,
}

/// Route `body` (a Chat Completions request for `model_id`) for `principal` on `proxy`.
pub fn route(
    rt: &Runtime,
    principal: &Principal,
    proxy: &ProxyPolicy,
    body: &[u8],
    model_id: &str,
) -> Result<Routed, ApiError> {
    let policy = rt.policy_for(principal, proxy);
    match rt.catalog.resolve(model_id)? {
        Target::Provider { provider, model } => {
            let (p, key) = rt.authorize(principal, proxy, &provider)?;
            let named = format!("{provider}:{model}");
            if !policy.allows_model(&named) {
                return Err(ApiError::forbidden(
                    "model_not_allowed",
                    format!("your routing policy does not allow `{named}`; use `auto` or an allowed model"),
                ));
            }
            Ok(Routed {
                rewritten: None,
                targets: vec![Candidate { provider: p.clone(), model, tier: None, key }],
                info: None,
            })
        }
        Target::Auto => {
            let ov = take_override(body)?;
            let rewritten = ov.body.map(Bytes::from);
            let class = rt.router.classify_request(rewritten.as_deref().unwrap_or(body))?;
            let tiers = rt.tier_map(proxy);
            let decision = decide(&tiers, &policy, class.tier, ov.tier).map_err(|e| match e {
                DecideError::NoModelAllowed if Tier::ALL.iter().all(|t| tiers.models(*t).is_empty()) => {
                    ApiError::bad_request(
                        "model_not_found",
                        format!("`auto` routing has no tiers configured for proxy `{}`", proxy.id),
                    )
                    .with_param("model")
                }
                DecideError::NoModelAllowed => ApiError::forbidden(
                    "model_not_allowed",
                    "your routing policy allows no model of any tier `auto` could route to",
                ),
            })?;
            // Candidates this principal cannot use (provider access, proxy scope) are skipped.
            let targets: Vec<Candidate> = decision
                .candidates
                .iter()
                .filter_map(|c| {
                    let (p, m) = c.model.split_once(':')?;
                    let (provider, key) = rt.authorize(principal, proxy, p).ok()?;
                    Some(Candidate { provider: provider.clone(), model: m.to_string(), tier: Some(c.tier), key })
                })
                .collect();
            if targets.is_empty() {
                return Err(ApiError::forbidden(
                    "provider_not_allowed",
                    format!("this credential has no access to any provider of the `{}` tier's models", decision.tier),
                ));
            }
            let info = RouteInfo {
                tier: decision.tier,
                score: class.score,
                classified: class.tier,
                override_tier: ov.tier,
                policy_capped: decision.policy_capped,
            };
            Ok(Routed { rewritten, targets, info: Some(info) })
        }
    }
}
