//! Budgets, rate limits and pricing, as decisions: what a request reserves before it goes
//! upstream, what it settles once its real usage is known, and how a rejection is answered.
//!
//! The counters themselves live in the state store (shared by every node); this module only
//! names them and does the arithmetic. A request reserves `1` request, an estimate of its
//! tokens and an estimate of its cost on every counter of every scope that limits it, all or
//! nothing; when it ends, the difference between the estimate and the real usage is added (or
//! refunded). Costs are counted in nano-dollars so that a single cheap token still counts.

use crate::usage::Usage;
use crate::ApiError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Nano-dollars per US dollar: the unit of cost counters.
pub const NANOS_PER_USD: f64 = 1e9;

/// How long usage history buckets are kept past their hour, so that `/v1/usage` can sum the
/// last 24 hours.
pub const HISTORY_KEEP: Duration = Duration::from_secs(25 * 3600);

/// Hourly buckets summed for the `last24h` usage report.
pub const HISTORY_HOURS: usize = 24;

/// A limit's window. Minute, hour and day are fixed lengths aligned to the Unix epoch (so UTC);
/// a month is the calendar month in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Minute,
    Hour,
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The fixed length of the window; `None` for the calendar month.
    pub fn fixed(self) -> Option<Duration> {
        match self {
            Period::Minute => Some(Duration::from_secs(60)),
            Period::Hour => Some(Duration::from_secs(3600)),
            Period::Day => Some(Duration::from_secs(86_400)),
            Period::Month => None,
        }
    }
}

/// One limit on one scope: any of requests, tokens (prompt + completion) and cost per window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub window: Period,
    #[serde(default)]
    pub requests: Option<u64>,
    #[serde(default)]
    pub tokens: Option<u64>,
    #[serde(default)]
    pub cost_usd: Option<f64>,
}

impl Limit {
    /// Checks a limit from a config file; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.requests.is_none() && self.tokens.is_none() && self.cost_usd.is_none() {
            return Err("a limit needs at least one of `requests`, `tokens` or `cost_usd`".into());
        }
        if let Some(c) = self.cost_usd {
            if !c.is_finite() || c < 0.0 {
                return Err(format!("`cost_usd` must be a non-negative number, not {c}"));
            }
        }
        Ok(())
    }

    fn caps(&self) -> impl Iterator<Item = (Metric, u64)> + '_ {
        [
            self.requests.map(|n| (Metric::Requests, n)),
            self.tokens.map(|n| (Metric::Tokens, n)),
            self.cost_usd.map(|c| (Metric::Cost, usd_to_nanos(c))),
        ]
        .into_iter()
        .flatten()
    }
}

/// Checks a list of limits: each window at most once, so that two caps never share a counter.
pub fn validate_limits(limits: &[Limit]) -> Result<(), String> {
    for (i, l) in limits.iter().enumerate() {
        l.validate().map_err(|m| format!("[{i}]: {m}"))?;
        if limits[..i].iter().any(|o| o.window == l.window) {
            return Err(format!("[{i}]: window `{}` is limited twice; put its caps in one entry", l.window.as_str()));
        }
    }
    Ok(())
}

/// Parses `--limit WINDOW:CAP=N` command-line flags (CAP: requests, tokens or cost_usd); caps of
/// one window merge into one limit.
pub fn parse_limit_flags(flags: &[String]) -> Result<Vec<Limit>, String> {
    let mut out: Vec<Limit> = Vec::new();
    for f in flags {
        let bad = || format!("`{f}`: expected WINDOW:CAP=N, e.g. minute:requests=60 or day:cost_usd=25");
        let (window, cap) = f.split_once(':').ok_or_else(bad)?;
        let (cap, value) = cap.split_once('=').ok_or_else(bad)?;
        let window = match window.trim() {
            "minute" => Period::Minute,
            "hour" => Period::Hour,
            "day" => Period::Day,
            "month" => Period::Month,
            w => return Err(format!("`{w}`: the window is minute, hour, day or month")),
        };
        let i = match out.iter().position(|l| l.window == window) {
            Some(i) => i,
            None => {
                out.push(Limit { window, requests: None, tokens: None, cost_usd: None });
                out.len() - 1
            }
        };
        let value = value.trim();
        let count = || value.parse::<u64>().map_err(|_| format!("`{value}` is not a whole number"));
        match cap.trim() {
            "requests" => out[i].requests = Some(count()?),
            "tokens" => out[i].tokens = Some(count()?),
            "cost_usd" => {
                out[i].cost_usd = Some(value.parse::<f64>().map_err(|_| format!("`{value}` is not a number"))?)
            }
            c => return Err(format!("`{c}`: the cap is requests, tokens or cost_usd")),
        }
    }
    validate_limits(&out)?;
    Ok(out)
}

/// Limits written back as `--limit` flags, for listings.
pub fn limit_flags(limits: &[Limit]) -> String {
    let mut parts = Vec::new();
    for l in limits {
        let w = l.window.as_str();
        parts.extend(l.requests.map(|n| format!("{w}:requests={n}")));
        parts.extend(l.tokens.map(|n| format!("{w}:tokens={n}")));
        parts.extend(l.cost_usd.map(|c| format!("{w}:cost_usd={c}")));
    }
    parts.join(",")
}

/// Prices in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Prompt tokens read from the provider's cache; `input` when not set.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Prompt tokens written to the provider's cache (Anthropic, Bedrock); `input` when not set.
    #[serde(default)]
    pub cache_write: Option<f64>,
}

impl Price {
    fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("input", Some(self.input)),
            ("output", Some(self.output)),
            ("cached_input", self.cached_input),
            ("cache_write", self.cache_write),
        ] {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return Err(format!("`{name}` must be a non-negative number of USD per million tokens, not {v}"));
                }
            }
        }
        Ok(())
    }

    /// The cost of `usage` in nano-dollars. `prompt_tokens` includes cached and cache-write
    /// tokens (as every translator reports it); each part is priced at its own rate.
    pub fn cost_nanos(&self, usage: &Usage) -> u64 {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let written = usage.cache_write_tokens.min(usage.prompt_tokens - cached);
        let fresh = usage.prompt_tokens - cached - written;
        // USD per million tokens = nano-dollars per thousandth of a token: n × price × 1000.
        let nanos = fresh as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + written as f64 * self.cache_write.unwrap_or(self.input)
            + usage.completion_tokens as f64 * self.output;
        to_counter(nanos * 1000.0)
    }

    fn estimate_nanos(&self, prompt_tokens: u64, output_tokens: u64) -> u64 {
        to_counter((prompt_tokens as f64 * self.input + output_tokens as f64 * self.output) * 1000.0)
    }
}

/// A non-negative float rounded up to a counter value (saturating).
fn to_counter(x: f64) -> u64 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= u64::MAX as f64 {
        u64::MAX
    } else {
        x.ceil() as u64
    }
}

pub fn usd_to_nanos(usd: f64) -> u64 {
    to_counter(usd * NANOS_PER_USD)
}

pub fn nanos_to_usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// Prices by `provider:model`, with `provider:*` as a provider's default.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    /// Provider → model → price, so a lookup borrows its keys instead of joining them.
    exact: HashMap<String, HashMap<String, Price>>,
    provider_default: HashMap<String, Price>,
}

impl PriceTable {
    /// Builds the table from the `[pricing]` config section; errors name the offending entry.
    pub fn new(entries: &BTreeMap<String, Price>) -> Result<Self, (String, String)> {
        let mut t = PriceTable::default();
        for (id, price) in entries {
            price.validate().map_err(|m| (id.clone(), m))?;
            match id.split_once(':') {
                Some((p, "*")) if !p.is_empty() => t.provider_default.insert(p.to_string(), *price),
                Some((p, m)) if !p.is_empty() && !m.is_empty() => {
                    t.exact.entry(p.to_string()).or_default().insert(m.to_string(), *price)
                }
                _ => return Err((id.clone(), "a price is keyed by `provider:model` or `provider:*`".into())),
            };
        }
        Ok(t)
    }

    /// The price of `model` at `provider`, if configured.
    pub fn get(&self, provider: &str, model: &str) -> Option<&Price> {
        self.exact.get(provider).and_then(|m| m.get(model)).or_else(|| self.provider_default.get(provider))
    }
}

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Requests,
    /// Prompt plus completion tokens.
    Tokens,
    /// Nano-dollars.
    Cost,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Requests => "requests",
            Metric::Tokens => "tokens",
            Metric::Cost => "cost",
        }
    }
}

/// Who a set of limits applies to. Counters are shared by everything in the scope: a group's
/// limits are the group's total, a proxy's the proxy's total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeKind {
    Key,
    /// An IdP user, whichever token they present.
    User,
    /// An OAuth client, for its client-credentials tokens.
    Client,
    Group,
    Proxy,
}

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Key => "key",
            ScopeKind::User => "user",
            ScopeKind::Client => "client",
            ScopeKind::Group => "group",
            ScopeKind::Proxy => "proxy",
        }
    }

    pub fn parse(s: &str) -> Option<ScopeKind> {
        [ScopeKind::Key, ScopeKind::User, ScopeKind::Client, ScopeKind::Group, ScopeKind::Proxy]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One scope's limits, as they apply to a request.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub kind: ScopeKind,
    /// The scope's id (key name or id, group name, proxy id); part of the counter key.
    pub id: &'a str,
    /// How messages name the scope (a stored key's name rather than its counter id).
    pub name: &'a str,
    pub limits: &'a [Limit],
}

/// The counter key of one cap. Part of the state-store contract: nodes of different versions
/// share these counters during a rolling deploy.
pub fn counter_key(kind: ScopeKind, id: &str, metric: Metric) -> String {
    format!("limit:{}:{id}:{}", kind.as_str(), metric.as_str())
}

/// The usage-history counter key (hourly buckets) of a principal.
pub fn history_key(kind: ScopeKind, id: &str, what: HistoryField) -> String {
    format!("usage:{}:{id}:{}", kind.as_str(), what.as_str())
}

/// The counter of one principal's daily usage of one `provider:model`.
pub fn daily_key(kind: ScopeKind, id: &str, model: &str, what: HistoryField) -> String {
    format!("usage-day:{}:{id}:{model}:{}", kind.as_str(), what.as_str())
}

/// The fields of a principal's usage history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryField {
    Requests,
    InputTokens,
    OutputTokens,
    Cost,
}

impl HistoryField {
    pub const ALL: [HistoryField; 4] =
        [HistoryField::Requests, HistoryField::InputTokens, HistoryField::OutputTokens, HistoryField::Cost];

    pub fn as_str(self) -> &'static str {
        match self {
            HistoryField::Requests => "requests",
            HistoryField::InputTokens => "input_tokens",
            HistoryField::OutputTokens => "output_tokens",
            HistoryField::Cost => "cost",
        }
    }

    /// This field's amount in a settled request.
    pub fn amount(self, usage: &Usage, cost_nanos: u64) -> u64 {
        match self {
            HistoryField::Requests => 1,
            HistoryField::InputTokens => usage.prompt_tokens,
            HistoryField::OutputTokens => usage.completion_tokens,
            HistoryField::Cost => cost_nanos,
        }
    }
}

/// What a request is expected to use, reserved before it is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    pub tokens: u64,
    pub cost_nanos: u64,
}

/// Bytes per token assumed for the prompt estimate. Counting the whole JSON body over-estimates
/// a little, which is the safe side for a reservation that is settled later anyway.
const BYTES_PER_TOKEN: usize = 4;

/// Estimates a request: its body's bytes for the prompt, and the output cap it asks for
/// (`max_tokens`, `max_completion_tokens`, `max_output_tokens`) or `default_output` tokens.
pub fn estimate(body_bytes: usize, max_output: Option<u64>, default_output: u64, price: Option<&Price>) -> Estimate {
    let prompt = body_bytes.div_ceil(BYTES_PER_TOKEN) as u64;
    let output = max_output.unwrap_or(default_output);
    Estimate {
        tokens: prompt.saturating_add(output),
        cost_nanos: price.map_or(0, |p| p.estimate_nanos(prompt, output)),
    }
}

/// The output cap a request asks for, whatever its wire: OpenAI `max_tokens` /
/// `max_completion_tokens` / `max_output_tokens` (Responses), Anthropic `max_tokens`, Gemini
/// `generationConfig.maxOutputTokens`, Bedrock `inferenceConfig.maxTokens`. `None` when absent
/// or when the body is not JSON (the route rejects that on its own).
pub fn max_output_tokens(body: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Nested {
        #[serde(default, rename = "maxOutputTokens")]
        max_output_tokens: Option<u64>,
        #[serde(default, rename = "maxTokens")]
        max_tokens: Option<u64>,
    }
    #[derive(Deserialize)]
    struct Caps {
        #[serde(default)]
        max_tokens: Option<u64>,
        #[serde(default)]
        max_completion_tokens: Option<u64>,
        #[serde(default)]
        max_output_tokens: Option<u64>,
        #[serde(default, rename = "generationConfig")]
        generation_config: Option<Nested>,
        #[serde(default, rename = "inferenceConfig")]
        inference_config: Option<Nested>,
    }
    let c: Caps = serde_json::from_slice(body).ok()?;
    c.max_completion_tokens
        .or(c.max_tokens)
        .or(c.max_output_tokens)
        .or(c.generation_config.and_then(|g| g.max_output_tokens))
        .or(c.inference_config.and_then(|i| i.max_tokens))
}

/// One cap's share of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub scope: ScopeKind,
    /// The scope's name, for messages.
    pub scope_name: String,
    pub metric: Metric,
    pub period: Period,
    pub counter: String,
    /// What was reserved on the counter.
    pub amount: u64,
    pub limit: u64,
}

/// The charges a request reserves: one per cap of every scope.
pub fn plan(scopes: &[Scope<'_>], est: &Estimate) -> Vec<Charge> {
    let mut out = Vec::new();
    for s in scopes {
        for l in s.limits {
            for (metric, limit) in l.caps() {
                let amount = match metric {
                    Metric::Requests => 1,
                    Metric::Tokens => est.tokens,
                    Metric::Cost => est.cost_nanos,
                };
                out.push(Charge {
                    scope: s.kind,
                    scope_name: s.name.to_string(),
                    metric,
                    period: l.window,
                    counter: counter_key(s.kind, s.id, metric),
                    amount,
                    limit,
                });
            }
        }
    }
    out
}

/// A counter's state after a reservation, as the store reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterState {
    pub allowed: bool,
    pub total: u64,
    pub reset_after: Duration,
}

/// The adjustment each charge needs once the request's real tokens and cost are known (negative
/// refunds an over-estimate). Request counts are never refunded: a request that failed still
/// was a request.
pub fn settlement(charges: &[Charge], tokens: u64, cost_nanos: u64) -> Vec<(usize, i64)> {
    charges
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let actual = match c.metric {
                Metric::Requests => return None,
                Metric::Tokens => tokens,
                Metric::Cost => cost_nanos,
            };
            let delta = signed(actual) - signed(c.amount);
            (delta != 0).then_some((i, delta))
        })
        .collect()
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whole seconds until `d` has passed, at least one (a `Retry-After` of 0 invites a hot loop).
fn retry_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

/// The 429 for a reservation that did not fit: names the scope, window and what ran out, and
/// waits until the latest of the rejecting windows rolls over.
pub fn rejection(charges: &[Charge], states: &[CounterState]) -> ApiError {
    let rejected: Vec<(&Charge, &CounterState)> = charges.iter().zip(states).filter(|(_, s)| !s.allowed).collect();
    let wait = rejected.iter().map(|(_, s)| s.reset_after).max().unwrap_or(Duration::from_secs(1));
    let Some((c, s)) = rejected.iter().max_by_key(|(_, s)| s.reset_after) else {
        return ApiError::new(429, "requests", Some("rate_limit_exceeded"), "rate limit reached")
            .with_retry_after(retry_secs(wait));
    };
    let scope = format!("{} `{}`", c.scope.as_str(), c.scope_name);
    let per = c.period.as_str();
    let err = match c.metric {
        Metric::Requests => ApiError::new(
            429,
            "requests",
            Some("rate_limit_exceeded"),
            format!("rate limit reached for {scope}: {} requests per {per}", c.limit),
        ),
        Metric::Tokens => ApiError::new(
            429,
            "tokens",
            Some("rate_limit_exceeded"),
            format!(
                "rate limit reached for {scope}: {} tokens per {per}, {} used, this request needs about {}",
                c.limit, s.total, c.amount
            ),
        ),
        Metric::Cost => ApiError::new(
            429,
            "insufficient_quota",
            Some("budget_exceeded"),
            format!(
                "budget exhausted for {scope}: ${:.4} per {per}, ${:.4} spent",
                nanos_to_usd(c.limit),
                nanos_to_usd(s.total)
            ),
        ),
    };
    err.with_retry_after(retry_secs(wait))
}

/// A duration the way OpenAI's `x-ratelimit-reset-*` headers write it: `20ms`, `6s`, `6m0s`,
/// `1h2m3s`.
pub fn reset_text(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis().max(1));
    }
    let secs = retry_secs(d);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// OpenAI-style `x-ratelimit-*` headers for the tightest request and token caps (the ones with
/// the least left), so clients that pace themselves by them see the limit that binds first.
pub fn rate_headers(charges: &[Charge], states: &[CounterState]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (metric, names) in [
        (
            Metric::Requests,
            ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"],
        ),
        (Metric::Tokens, ["x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"]),
    ] {
        let tightest = charges
            .iter()
            .zip(states)
            .filter(|(c, _)| c.metric == metric)
            .min_by_key(|(c, s)| c.limit.saturating_sub(s.total));
        if let Some((c, s)) = tightest {
            out.push((names[0], c.limit.to_string()));
            out.push((names[1], c.limit.saturating_sub(s.total).to_string()));
            out.push((names[2], reset_text(s.reset_after)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(window: Period, requests: Option<u64>, tokens: Option<u64>, cost_usd: Option<f64>) -> Limit {
        Limit { window, requests, tokens, cost_usd }
    }

    fn usage(prompt: u64, completion: u64, cached: u64, written: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cached_tokens: cached,
            reasoning_tokens: 0,
            cache_write_tokens: written,
        }
    }

    #[test]
    fn cost_prices_each_part_of_the_prompt() {
        let p = Price { input: 3.0, output: 15.0, cached_input: Some(0.3), cache_write: Some(3.75) };
        // 1M fresh input = $3, 1M cached = $0.30, 1M written = $3.75, 1M output = $15.
        let u = usage(3_000_000, 1_000_000, 1_000_000, 1_000_000);
        assert_eq!(p.cost_nanos(&u), usd_to_nanos(3.0 + 0.3 + 3.75 + 15.0));
        // Cache rates default to the input rate.
        let plain = Price { input: 2.0, output: 8.0, cached_input: None, cache_write: None };
        assert_eq!(plain.cost_nanos(&u), usd_to_nanos(2.0 * 3.0 + 8.0));
        // One cheap token still costs something.
        let mini = Price { input: 0.15, output: 0.6, cached_input: None, cache_write: None };
        assert_eq!(mini.cost_nanos(&usage(1, 0, 0, 0)), 150);
    }

    #[test]
    fn cost_survives_inconsistent_usage() {
        let p = Price { input: 1.0, output: 1.0, cached_input: None, cache_write: None };
        // More cached than prompt tokens (a provider bug) must not underflow.
        assert_eq!(p.cost_nanos(&usage(10, 0, 50, 50)), 10_000);
    }

    #[test]
    fn price_table_falls_back_to_the_provider_default() {
        let mut m = BTreeMap::new();
        m.insert(
            "openai:gpt-4o".to_string(),
            Price { input: 2.5, output: 10.0, cached_input: None, cache_write: None },
        );
        m.insert("openai:*".to_string(), Price { input: 1.0, output: 2.0, cached_input: None, cache_write: None });
        let t = PriceTable::new(&m).unwrap();
        assert_eq!(t.get("openai", "gpt-4o").unwrap().input, 2.5);
        assert_eq!(t.get("openai", "other").unwrap().input, 1.0);
        assert!(t.get("anthropic", "x").is_none());
        let mut bad = BTreeMap::new();
        bad.insert("gpt-4o".to_string(), Price { input: 1.0, output: 1.0, cached_input: None, cache_write: None });
        assert!(PriceTable::new(&bad).is_err());
        let mut neg = BTreeMap::new();
        neg.insert("a:b".to_string(), Price { input: -1.0, output: 1.0, cached_input: None, cache_write: None });
        assert!(PriceTable::new(&neg).unwrap_err().1.contains("non-negative"));
    }

    #[test]
    fn limits_validate() {
        assert!(limit(Period::Day, None, None, None).validate().is_err());
        assert!(limit(Period::Day, None, None, Some(f64::NAN)).validate().is_err());
        assert!(limit(Period::Day, Some(1), None, None).validate().is_ok());
        let twice = [limit(Period::Minute, Some(1), None, None), limit(Period::Minute, None, Some(5), None)];
        assert!(validate_limits(&twice).unwrap_err().contains("twice"));
    }

    #[test]
    fn estimate_counts_body_and_output_cap() {
        let p = Price { input: 1.0, output: 4.0, cached_input: None, cache_write: None };
        let e = estimate(400, Some(50), 512, Some(&p));
        assert_eq!(e.tokens, 150);
        assert_eq!(e.cost_nanos, (100 * 1000) + (50 * 4000));
        let e = estimate(1, None, 512, None);
        assert_eq!(e, Estimate { tokens: 513, cost_nanos: 0 });
    }

    #[test]
    fn plan_has_one_charge_per_cap() {
        let key_limits = [limit(Period::Minute, Some(10), Some(1000), None), limit(Period::Day, None, None, Some(2.5))];
        let group_limits = [limit(Period::Month, Some(100), None, None)];
        let scopes = [
            Scope { kind: ScopeKind::Key, id: "ci", name: "ci", limits: &key_limits },
            Scope { kind: ScopeKind::Group, id: "eng", name: "eng", limits: &group_limits },
        ];
        let est = Estimate { tokens: 42, cost_nanos: 7 };
        let charges = plan(&scopes, &est);
        let got: Vec<(&str, u64, u64)> = charges.iter().map(|c| (c.counter.as_str(), c.amount, c.limit)).collect();
        assert_eq!(
            got,
            vec![
                ("limit:key:ci:requests", 1, 10),
                ("limit:key:ci:tokens", 42, 1000),
                ("limit:key:ci:cost", 7, 2_500_000_000),
                ("limit:group:eng:requests", 1, 100),
            ]
        );
        assert_eq!(charges[3].period, Period::Month);
    }

    #[test]
    fn settlement_refunds_and_tops_up_but_keeps_request_counts() {
        let l = [limit(Period::Minute, Some(10), Some(1000), Some(1.0))];
        let charges = plan(
            &[Scope { kind: ScopeKind::Key, id: "k", name: "k", limits: &l }],
            &Estimate { tokens: 500, cost_nanos: 900 },
        );
        assert_eq!(settlement(&charges, 120, 1000), vec![(1, -380), (2, 100)]);
        assert_eq!(settlement(&charges, 500, 900), vec![]);
        // A request that never reached the provider gives its whole estimate back.
        assert_eq!(settlement(&charges, 0, 0), vec![(1, -500), (2, -900)]);
    }

    #[test]
    fn rejection_names_the_cap_and_waits_for_the_latest_window() {
        let l = [limit(Period::Minute, Some(2), None, None), limit(Period::Day, None, None, Some(0.01))];
        let charges = plan(
            &[Scope { kind: ScopeKind::Key, id: "ci", name: "ci", limits: &l }],
            &Estimate { tokens: 1, cost_nanos: 50 },
        );
        let states = [
            CounterState { allowed: false, total: 2, reset_after: Duration::from_millis(12_300) },
            CounterState { allowed: true, total: 0, reset_after: Duration::from_secs(50_000) },
        ];
        let e = rejection(&charges, &states);
        assert_eq!((e.status, e.kind, e.code), (429, "requests", Some("rate_limit_exceeded")));
        assert_eq!(e.retry_after, Some(13));
        assert!(e.message.contains("key `ci`") && e.message.contains("2 requests per minute"), "{}", e.message);
        let states = [
            CounterState { allowed: false, total: 2, reset_after: Duration::from_secs(5) },
            CounterState { allowed: false, total: 10_000_000, reset_after: Duration::from_secs(50_000) },
        ];
        let e = rejection(&charges, &states);
        assert_eq!((e.kind, e.code), ("insufficient_quota", Some("budget_exceeded")));
        assert_eq!(e.retry_after, Some(50_000));
        assert!(e.message.contains("$0.0100 per day"), "{}", e.message);
    }

    #[test]
    fn reset_text_matches_openai() {
        assert_eq!(reset_text(Duration::from_millis(20)), "20ms");
        assert_eq!(reset_text(Duration::ZERO), "1ms");
        assert_eq!(reset_text(Duration::from_millis(5_200)), "6s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
        assert_eq!(reset_text(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(retry_secs(Duration::ZERO), 1);
        assert_eq!(retry_secs(Duration::from_secs(4)), 4);
    }

    #[test]
    fn rate_headers_show_the_tightest_caps() {
        let key = [limit(Period::Minute, Some(10), Some(1000), None)];
        let proxy = [limit(Period::Minute, Some(100), None, None)];
        let charges = plan(
            &[
                Scope { kind: ScopeKind::Key, id: "k", name: "k", limits: &key },
                Scope { kind: ScopeKind::Proxy, id: "default", name: "default", limits: &proxy },
            ],
            &Estimate { tokens: 10, cost_nanos: 0 },
        );
        let states = [
            CounterState { allowed: true, total: 9, reset_after: Duration::from_secs(30) },
            CounterState { allowed: true, total: 10, reset_after: Duration::from_secs(30) },
            CounterState { allowed: true, total: 95, reset_after: Duration::from_secs(30) },
        ];
        let h: HashMap<&str, String> = rate_headers(&charges, &states).into_iter().collect();
        assert_eq!(h["x-ratelimit-limit-requests"], "10");
        assert_eq!(h["x-ratelimit-remaining-requests"], "1");
        assert_eq!(h["x-ratelimit-reset-requests"], "30s");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "990");
        // Over-settled counters report zero left, not a wrapped number.
        let over = [CounterState { allowed: true, total: 2000, reset_after: Duration::from_secs(1) }; 3];
        let h: HashMap<&str, String> = rate_headers(&charges, &over).into_iter().collect();
        assert_eq!(h["x-ratelimit-remaining-tokens"], "0");
    }

    #[test]
    fn output_caps_of_every_wire() {
        assert_eq!(max_output_tokens(br#"{"model":"m","max_tokens":7}"#), Some(7));
        assert_eq!(max_output_tokens(br#"{"max_tokens":7,"max_completion_tokens":9}"#), Some(9));
        assert_eq!(max_output_tokens(br#"{"input":"x","max_output_tokens":11}"#), Some(11));
        assert_eq!(max_output_tokens(br#"{"generationConfig":{"maxOutputTokens":12}}"#), Some(12));
        assert_eq!(max_output_tokens(br#"{"inferenceConfig":{"maxTokens":13}}"#), Some(13));
        assert_eq!(max_output_tokens(br#"{"messages":[]}"#), None);
        assert_eq!(max_output_tokens(b"not json"), None);
        assert_eq!(max_output_tokens(br#"{"max_tokens":-1}"#), None);
    }

    #[test]
    fn limit_flags_parse_and_merge_by_window() {
        let flags: Vec<String> =
            ["minute:requests=60", "day:cost_usd=2.5", "minute:tokens=1000"].iter().map(|s| s.to_string()).collect();
        let l = parse_limit_flags(&flags).unwrap();
        assert_eq!(
            l,
            vec![limit(Period::Minute, Some(60), Some(1000), None), limit(Period::Day, None, None, Some(2.5))]
        );
        assert_eq!(limit_flags(&l), "minute:requests=60,minute:tokens=1000,day:cost_usd=2.5");
        for bad in ["week:requests=1", "minute:calls=1", "minute:requests=x", "minute", "day:cost_usd=-1"] {
            assert!(parse_limit_flags(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn history_fields() {
        let u = usage(30, 7, 0, 0);
        let amounts: Vec<u64> = HistoryField::ALL.iter().map(|f| f.amount(&u, 99)).collect();
        assert_eq!(amounts, vec![1, 30, 7, 99]);
        assert_eq!(history_key(ScopeKind::Key, "ci", HistoryField::Cost), "usage:key:ci:cost");
    }
}
