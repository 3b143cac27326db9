//! Which models a tier maps to, and which tiers and models a principal may reach.
//!
//! A proxy has one [`TierMap`]. Policies come in layers — proxy, group, user — and are merged
//! with [`Policy::merge`]; every cap is "most restrictive wins", so a layer can narrow what the
//! layers above allow but never widen it. [`decide`] applies the merged policy after
//! classification *and* after an inline override, so a user typing `/max` cannot reach a tier
//! their policy does not grant.

use super::Tier;
use serde::{Deserialize, Serialize};

/// Tier → ordered `provider:model` candidates, cheapest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierMap {
    #[serde(default)]
    pub simple: Vec<String>,
    #[serde(default)]
    pub medium: Vec<String>,
    #[serde(default)]
    pub complex: Vec<String>,
    #[serde(default)]
    pub reasoning: Vec<String>,
}

impl TierMap {
    /// The candidates configured for `tier`.
    pub fn models(&self, tier: Tier) -> &[String] {
        match tier {
            Tier::Simple => &self.simple,
            Tier::Medium => &self.medium,
            Tier::Complex => &self.complex,
            Tier::Reasoning => &self.reasoning,
        }
    }
}

/// One layer of routing policy. `None` means "this layer does not restrict".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The highest tier reachable.
    #[serde(default)]
    pub max_tier: Option<Tier>,
    /// The tiers reachable at all.
    #[serde(default)]
    pub allowed_tiers: Option<Vec<Tier>>,
    /// Models reachable, by tier routing or by naming them: exact `provider:model`, or
    /// `provider:*` for all of a provider's models.
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
}

impl Policy {
    /// Merges layers in order proxy < group < user. Most restrictive wins: the lowest
    /// `max_tier`, the intersection of `allowed_tiers`, and the intersection of `allowed_models`
    /// (a model passes the merged list only if every layer that has a list allows it).
    pub fn merge(layers: &[&Policy]) -> Policy {
        let max_tier = layers.iter().filter_map(|p| p.max_tier).min();
        let mut allowed_tiers: Option<Vec<Tier>> = None;
        for t in layers.iter().filter_map(|p| p.allowed_tiers.as_ref()) {
            allowed_tiers = Some(match allowed_tiers {
                None => t.clone(),
                Some(a) => a.into_iter().filter(|x| t.contains(x)).collect(),
            });
        }
        let lists: Vec<&Vec<String>> = layers.iter().filter_map(|p| p.allowed_models.as_ref()).collect();
        let allowed_models = (!lists.is_empty()).then(|| {
            // Keep each entry of any list that every list admits; `provider:*` in one layer and
            // `provider:m` in another meet at `provider:m`.
            let mut out: Vec<String> = Vec::new();
            for entry in lists.iter().flat_map(|l| l.iter()) {
                let admitted = lists.iter().all(|l| l.iter().any(|p| pattern_covers(p, entry)));
                if admitted && !out.contains(entry) {
                    out.push(entry.clone());
                }
            }
            out
        });
        Policy { max_tier, allowed_tiers, allowed_models }
    }

    /// Whether `tier` is reachable.
    pub fn allows_tier(&self, tier: Tier) -> bool {
        self.max_tier.is_none_or(|m| tier <= m) && self.allowed_tiers.as_ref().is_none_or(|t| t.contains(&tier))
    }

    /// Whether `model` (`provider:model`) may be used, by tier routing or when named explicitly.
    pub fn allows_model(&self, model: &str) -> bool {
        self.allowed_models.as_ref().is_none_or(|l| l.iter().any(|p| pattern_covers(p, model)))
    }
}

/// `pattern` is exact, or `provider:*`. A pattern also covers a narrower pattern, which is what
/// lets two `allowed_models` lists intersect.
fn pattern_covers(pattern: &str, model: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) if prefix.ends_with(':') => model.starts_with(prefix),
        _ => pattern == model,
    }
}

/// One model to try, with the tier it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub tier: Tier,
    pub model: String,
}

/// What [`decide`] chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The tier served: that of the first candidate.
    pub tier: Tier,
    /// Models to try in order: the tier's models, then the next tiers up, within the policy.
    pub candidates: Vec<Candidate>,
    /// An inline override chose the requested tier (before any cap).
    pub override_applied: bool,
    /// The policy moved the tier away from the one requested.
    pub policy_capped: bool,
}

/// Why no model could be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecideError {
    /// The policy leaves no configured model in any tier.
    NoModelAllowed,
}

/// Chooses tier and candidate models. `override_tier` (from an inline override) replaces the
/// classified tier; then the policy caps it to the highest reachable tier not above it (or,
/// when none is, the lowest reachable one). Candidates are that tier's allowed models, then
/// those of each reachable tier above; if that is empty (tiers with no configured or allowed
/// models), the reachable tiers below, highest first, so a request is served rather than refused.
pub fn decide(
    map: &TierMap,
    policy: &Policy,
    classified: Tier,
    override_tier: Option<Tier>,
) -> Result<Decision, DecideError> {
    let requested = override_tier.unwrap_or(classified);
    let reachable: Vec<Tier> = Tier::ALL.into_iter().filter(|t| policy.allows_tier(*t)).collect();
    let effective = reachable
        .iter()
        .rev()
        .find(|t| **t <= requested)
        .or_else(|| reachable.first())
        .copied()
        .ok_or(DecideError::NoModelAllowed)?;
    let push = |out: &mut Vec<Candidate>, tier: Tier| {
        for m in map.models(tier).iter().filter(|m| policy.allows_model(m)) {
            if !out.iter().any(|c| &c.model == m) {
                out.push(Candidate { tier, model: m.clone() });
            }
        }
    };
    let mut candidates = Vec::new();
    for t in reachable.iter().filter(|t| **t >= effective) {
        push(&mut candidates, *t);
    }
    if candidates.is_empty() {
        for t in reachable.iter().rev().filter(|t| **t < effective) {
            push(&mut candidates, *t);
        }
    }
    let tier = candidates.first().map(|c| c.tier).ok_or(DecideError::NoModelAllowed)?;
    Ok(Decision { tier, candidates, override_applied: override_tier.is_some(), policy_capped: effective != requested })
}

/// The models a principal may see in `/v1/models`: `auto` first (when any tier model is
/// reachable), then every reachable tier's allowed models, cheapest tier first, without repeats.
pub fn visible_models(map: &TierMap, policy: &Policy) -> Vec<String> {
    let mut out = vec!["auto".to_string()];
    for t in Tier::ALL.into_iter().filter(|t| policy.allows_tier(*t)) {
        for m in map.models(t).iter().filter(|m| policy.allows_model(m)) {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
    }
    if out.len() == 1 {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> TierMap {
        TierMap {
            simple: vec!["openai:gpt-4o-mini".into(), "groq:llama-8b".into()],
            medium: vec!["openai:gpt-4o".into()],
            complex: vec!["anthropic:claude-sonnet".into()],
            reasoning: vec!["openai:o3".into(), "anthropic:claude-opus".into()],
        }
    }

    fn models(d: &Decision) -> Vec<&str> {
        d.candidates.iter().map(|c| c.model.as_str()).collect()
    }

    #[test]
    fn unrestricted_falls_back_upwards() {
        let d = decide(&map(), &Policy::default(), Tier::Medium, None).expect("decides");
        assert_eq!(d.tier, Tier::Medium);
        assert_eq!(models(&d), ["openai:gpt-4o", "anthropic:claude-sonnet", "openai:o3", "anthropic:claude-opus"]);
        assert!(!d.override_applied && !d.policy_capped);
    }

    #[test]
    fn override_replaces_classification() {
        let d = decide(&map(), &Policy::default(), Tier::Reasoning, Some(Tier::Simple)).expect("decides");
        assert_eq!(d.tier, Tier::Simple);
        assert_eq!(models(&d)[..2], ["openai:gpt-4o-mini", "groq:llama-8b"]);
        assert!(d.override_applied && !d.policy_capped);
    }

    #[test]
    fn policy_caps_an_override() {
        let p = Policy { max_tier: Some(Tier::Medium), ..Default::default() };
        let d = decide(&map(), &p, Tier::Simple, Some(Tier::Reasoning)).expect("decides");
        assert_eq!(d.tier, Tier::Medium);
        assert_eq!(models(&d), ["openai:gpt-4o"], "nothing above the cap");
        assert!(d.override_applied && d.policy_capped);
    }

    #[test]
    fn allowed_tiers_pick_highest_below_then_lowest_above() {
        let p = Policy { allowed_tiers: Some(vec![Tier::Simple, Tier::Reasoning]), ..Default::default() };
        let d = decide(&map(), &p, Tier::Complex, None).expect("decides");
        assert_eq!(d.tier, Tier::Simple);
        assert!(d.policy_capped);
        assert_eq!(models(&d), ["openai:gpt-4o-mini", "groq:llama-8b", "openai:o3", "anthropic:claude-opus"]);
        let p = Policy { allowed_tiers: Some(vec![Tier::Complex]), ..Default::default() };
        let d = decide(&map(), &p, Tier::Simple, None).expect("decides");
        assert_eq!(d.tier, Tier::Complex);
        assert!(d.policy_capped);
    }

    #[test]
    fn allowed_models_filter_and_fall_back_down() {
        let p = Policy {
            allowed_models: Some(vec!["openai:*".into()]),
            max_tier: Some(Tier::Complex),
            ..Default::default()
        };
        // Complex has only an anthropic model: nothing at or above within the cap, so go down.
        let d = decide(&map(), &p, Tier::Complex, None).expect("decides");
        assert_eq!(d.tier, Tier::Medium);
        assert_eq!(models(&d), ["openai:gpt-4o", "openai:gpt-4o-mini"]);
        let none = Policy { allowed_models: Some(vec![]), ..Default::default() };
        assert_eq!(decide(&map(), &none, Tier::Simple, None), Err(DecideError::NoModelAllowed));
        let no_tier = Policy { allowed_tiers: Some(vec![]), ..Default::default() };
        assert_eq!(decide(&map(), &no_tier, Tier::Simple, None), Err(DecideError::NoModelAllowed));
    }

    #[test]
    fn merge_most_restrictive_wins() {
        let proxy = Policy {
            max_tier: Some(Tier::Complex),
            allowed_models: Some(vec!["openai:*".into()]),
            ..Default::default()
        };
        let group = Policy {
            allowed_tiers: Some(vec![Tier::Simple, Tier::Medium, Tier::Complex]),
            allowed_models: Some(vec!["openai:gpt-4o".into(), "anthropic:claude-sonnet".into()]),
            ..Default::default()
        };
        let user = Policy {
            max_tier: Some(Tier::Reasoning),
            allowed_tiers: Some(vec![Tier::Medium, Tier::Reasoning]),
            ..Default::default()
        };
        let m = Policy::merge(&[&proxy, &group, &user]);
        assert_eq!(m.max_tier, Some(Tier::Complex), "a user layer cannot raise the proxy cap");
        assert_eq!(m.allowed_tiers, Some(vec![Tier::Medium]));
        assert_eq!(m.allowed_models, Some(vec!["openai:gpt-4o".to_string()]));
        assert!(m.allows_model("openai:gpt-4o") && !m.allows_model("openai:o3"));
        assert_eq!(Policy::merge(&[]), Policy::default());
    }

    #[test]
    fn models_listing() {
        assert_eq!(visible_models(&map(), &Policy::default()).len(), 7);
        let p = Policy {
            max_tier: Some(Tier::Medium),
            allowed_models: Some(vec!["openai:*".into()]),
            ..Default::default()
        };
        assert_eq!(visible_models(&map(), &p), ["auto", "openai:gpt-4o-mini", "openai:gpt-4o"]);
        let none = Policy { allowed_tiers: Some(vec![]), ..Default::default() };
        assert!(visible_models(&map(), &none).is_empty());
    }
}
