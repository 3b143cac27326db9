//! The `auto` model router: classify a chat request into a [`Tier`] with a continuous score, honour
//! inline overrides ([`overrides`]), and pick models within a principal's policy ([`policy`]).
//!
//! The classifier is a logistic regression over hashed word n-grams plus the dense features of
//! [`features`], two of which come from a subject recogniser stored in the same file; its score estimates P(the weak model fails where the strong one succeeds). The
//! weights and tier thresholds live in a versioned model file (`conf/router-model.json`, embedded
//! here, refittable with `cargo run -p filters --release --example route_fit`). See
//! `docs/routing.md`.

pub mod features;
pub mod fit;
mod lbfgs;
pub mod overrides;
pub mod policy;
mod vocab;

use crate::ApiError;
use features::{Lexicon, RequestFacts, DENSE, MAX_CONTEXT_BYTES, MAX_SUBJECTS, N_DENSE};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use vocab::{Entry, Vocab};

/// The model file shipped with the binary.
pub const EMBEDDED_MODEL: &str = include_str!("../../../conf/router-model.json");

/// `format` value of a model file.
pub const MODEL_FORMAT: &str = "portcullis-router";
/// The model-file version this code reads. Bumped whenever [`features::extract`] changes meaning,
/// so an old file cannot be served with features it was not fitted on.
pub const MODEL_VERSION: u32 = 3;

/// Capability tiers, cheapest first. `Ord` follows cost: a cap is a maximum in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Simple,
    Medium,
    Complex,
    Reasoning,
}

impl Tier {
    /// All tiers, cheapest first.
    pub const ALL: [Tier; 4] = [Tier::Simple, Tier::Medium, Tier::Complex, Tier::Reasoning];

    /// Lowercase name, as in config, headers and `classify` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Simple => "simple",
            Tier::Medium => "medium",
            Tier::Complex => "complex",
            Tier::Reasoning => "reasoning",
        }
    }

    /// Parses a tier name or alias, case-insensitively: simple|basic|cheap, medium|balanced,
    /// complex|advanced, max|reasoning|think|deep.
    pub fn from_alias(s: &str) -> Option<Tier> {
        const ALIASES: [(&str, Tier); 11] = [
            ("simple", Tier::Simple),
            ("basic", Tier::Simple),
            ("cheap", Tier::Simple),
            ("medium", Tier::Medium),
            ("balanced", Tier::Medium),
            ("complex", Tier::Complex),
            ("advanced", Tier::Complex),
            ("max", Tier::Reasoning),
            ("reasoning", Tier::Reasoning),
            ("think", Tier::Reasoning),
            ("deep", Tier::Reasoning),
        ];
        ALIASES.iter().find(|(a, _)| a.eq_ignore_ascii_case(s)).map(|(_, t)| *t)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The classifier's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Classification {
    pub tier: Tier,
    /// P(needs the strong model), in [0, 1].
    pub score: f32,
}

/// One dense feature's parameters in the model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseParam {
    pub name: String,
    /// Standardisation: the feature enters as `(x - mean) / std`.
    pub mean: f32,
    pub std: f32,
    pub weight: f32,
    /// `false` for priors the fitter leaves as written (see [`Fit::Prior`]).
    pub fitted: bool,
}

/// Score thresholds between tiers, with the rule that chose them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub rule: String,
    pub medium: f32,
    pub complex: f32,
    pub reasoning: f32,
}

/// The subject recogniser: a sparse naive Bayes over the same hashed n-gram buckets (scaled the
/// same way) whose classes are the training data's (source, subject) groups; class score is the
/// bias plus the weights' dot product with the text's normalised idf vector. Serving
/// sees text only; the recogniser reads which group a prompt is like, and the group's training
/// `needs_strong` rate becomes a feature.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubjectFile {
    /// Group names (`source/subject`), for reading the file.
    pub names: Vec<String>,
    /// Smoothed training `needs_strong` rate per group.
    pub rates: Vec<f32>,
    /// Class intercepts.
    pub bias: Vec<f32>,
    /// Non-zero weights as `[bucket, class, weight]`.
    pub weights: Vec<(u32, u8, f32)>,
}

/// A bucket's run of recogniser weights: `(bucket, lo, hi)`, entries `lo..hi`.
type Run = (u32, u32, u32);

/// The loaded recogniser: `(class, weight)` runs sorted by bucket; each vocabulary entry holds
/// where its bucket's run lies.
#[derive(Debug, Clone)]
struct Subjects {
    n: usize,
    bias: [f32; MAX_SUBJECTS],
    rates: [f32; MAX_SUBJECTS],
    entries: Vec<(u8, f32)>,
}

impl Subjects {
    /// Validates and loads the recogniser; also returns each bucket's run.
    fn load(file: &SubjectFile, size: usize) -> Result<(Self, Vec<Run>), String> {
        let n = file.names.len();
        if n > MAX_SUBJECTS || file.rates.len() != n || file.bias.len() != n {
            return Err(format!(
                "router model: subjects need at most {MAX_SUBJECTS} names with one rate and bias each"
            ));
        }
        let mut s = Subjects { n, bias: [0.0; MAX_SUBJECTS], rates: [0.0; MAX_SUBJECTS], entries: Vec::new() };
        if n == 0 {
            return Ok((s, Vec::new()));
        }
        for (i, (r, b)) in file.rates.iter().zip(&file.bias).enumerate() {
            if !(r.is_finite() && (0.0..=1.0).contains(r) && b.is_finite()) {
                return Err(format!(
                    "router model: subject `{}` needs a rate in [0, 1] and a finite bias",
                    file.names[i]
                ));
            }
            s.rates[i] = *r;
            s.bias[i] = *b;
        }
        let mut w = file.weights.clone();
        for &(b, c, x) in &w {
            if b as usize >= size || c as usize >= n || !x.is_finite() {
                return Err(format!("router model: subject weight [{b}, {c}] out of range or not finite"));
            }
        }
        w.sort_unstable_by_key(|(b, c, _)| (*b, *c));
        let mut runs: Vec<Run> = Vec::new();
        for (i, &(b, _, _)) in w.iter().enumerate() {
            match runs.last_mut() {
                Some((last, _, hi)) if *last == b => *hi = i as u32 + 1,
                _ => runs.push((b, i as u32, i as u32 + 1)),
            }
        }
        s.entries = w.iter().map(|(_, c, x)| (*c, *x)).collect();
        Ok((s, runs))
    }

    /// Adds the class weights `entries[lo..hi]`, times the bucket's value `x`, to `acc`.
    #[inline]
    fn add(&self, lo: u32, hi: u32, x: f32, acc: &mut [f32; MAX_SUBJECTS]) {
        if let Some(run) = self.entries.get(lo as usize..hi as usize) {
            for &(c, w) in run {
                acc[c as usize] += w * x;
            }
        }
    }
}

/// The model file, as (de)serialised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub format: String,
    pub version: u32,
    /// Hashed n-gram table size is `2^hash_bits`.
    pub hash_bits: u32,
    pub intercept: f32,
    /// Exactly the dense features of [`DENSE`], in order.
    pub features: Vec<DenseParam>,
    /// The n-gram vocabulary as `[bucket, weight, idf]`. A text's n-grams enter as a binary
    /// vector over the vocabulary, each present bucket weighted by its idf and the vector
    /// L2-normalised (TF-IDF with presence for term frequency); buckets not listed are ignored.
    pub hashed: Vec<(u32, f32, f32)>,
    /// The subject recogniser behind `subject_rate` / `subject_conf` (empty: both features 0).
    #[serde(default)]
    pub subjects: SubjectFile,
    pub tiers: Thresholds,
    /// Provenance: data, parameters and cross-validated metrics. Not read by the gateway.
    #[serde(default)]
    pub trained: serde_json::Value,
}

/// A loaded, validated classifier. Cheap to share behind an `Arc`; classification takes `&self`.
#[derive(Debug, Clone)]
pub struct RouterModel {
    file_version: u32,
    hash_bits: u32,
    intercept: f32,
    /// Per dense feature: `(mean, 1/std, weight)`.
    dense: [(f32, f32, f32); N_DENSE],
    /// The n-gram vocabulary with each bucket's recogniser run: one lookup per n-gram.
    vocab: Vocab,
    subjects: Subjects,
    thresholds: [f32; 3],
    lexicon: Lexicon,
}

impl RouterModel {
    /// The model compiled into the binary.
    pub fn embedded() -> Result<Self, String> {
        Self::from_json(EMBEDDED_MODEL)
    }

    /// Parses and validates a model file (the gateway reads the file; this crate does no I/O).
    pub fn from_json(json: &str) -> Result<Self, String> {
        let file: ModelFile = serde_json::from_str(json).map_err(|e| format!("router model: {e}"))?;
        Self::from_file(&file)
    }

    /// Validates a parsed model file: format, version, feature list, table size, thresholds.
    pub fn from_file(file: &ModelFile) -> Result<Self, String> {
        if file.format != MODEL_FORMAT {
            return Err(format!("router model: format `{}`, expected `{MODEL_FORMAT}`", file.format));
        }
        if file.version != MODEL_VERSION {
            return Err(format!("router model: version {}, this build reads version {MODEL_VERSION}", file.version));
        }
        if !(8..=24).contains(&file.hash_bits) {
            return Err(format!("router model: hash_bits {} outside 8..=24", file.hash_bits));
        }
        if file.features.len() != N_DENSE || file.features.iter().zip(DENSE.iter()).any(|(p, (n, _))| p.name != *n) {
            let names: Vec<&str> = DENSE.iter().map(|(n, _)| *n).collect();
            return Err(format!("router model: features must be exactly {names:?} in that order"));
        }
        let mut dense = [(0f32, 1f32, 0f32); N_DENSE];
        for (slot, p) in dense.iter_mut().zip(&file.features) {
            if !(p.mean.is_finite() && p.std.is_finite() && p.std > 0.0 && p.weight.is_finite()) {
                return Err(format!("router model: feature `{}` needs finite mean/weight and std > 0", p.name));
            }
            *slot = (p.mean, 1.0 / p.std, p.weight);
        }
        let size = 1usize << file.hash_bits;
        let mut items: Vec<(u32, Entry)> = Vec::with_capacity(file.hashed.len());
        for &(b, w, idf) in &file.hashed {
            if b as usize >= size {
                return Err(format!("router model: bucket {b} >= {size}"));
            }
            if !(w.is_finite() && idf.is_finite() && idf > 0.0) {
                return Err(format!("router model: bucket {b} needs a finite weight and an idf > 0"));
            }
            items.push((b, Entry { w_idf: w * idf, idf, lo: 0, hi: 0 }));
        }
        items.sort_unstable_by_key(|(b, _)| *b);
        if items.windows(2).any(|p| p[0].0 == p[1].0) {
            return Err("router model: a bucket is listed twice in `hashed`".into());
        }
        let t = &file.tiers;
        let thresholds = [t.medium, t.complex, t.reasoning];
        if !(thresholds.iter().all(|x| x.is_finite()) && t.medium <= t.complex && t.complex <= t.reasoning) {
            return Err("router model: tier thresholds must be finite and medium <= complex <= reasoning".into());
        }
        if !file.intercept.is_finite() {
            return Err("router model: intercept is not finite".into());
        }
        let (subjects, runs) = Subjects::load(&file.subjects, size)?;
        for (b, lo, hi) in runs {
            // Recogniser weights multiply the bucket's idf: outside the vocabulary they are dead.
            let i = items
                .binary_search_by_key(&b, |(k, _)| *k)
                .map_err(|_| format!("router model: subject weight on bucket {b}, which is not in `hashed`"))?;
            items[i].1.lo = lo;
            items[i].1.hi = hi;
        }
        let vocab = Vocab::new(&items);
        Ok(RouterModel {
            file_version: file.version,
            hash_bits: file.hash_bits,
            intercept: file.intercept,
            dense,
            vocab,
            subjects,
            thresholds,
            lexicon: Lexicon::new()?,
        })
    }

    /// The model file's `version`.
    pub fn version(&self) -> u32 {
        self.file_version
    }

    /// The tier for a score: the highest tier whose threshold the score reaches.
    pub fn tier_for(&self, score: f32) -> Tier {
        let [m, c, r] = self.thresholds;
        if score >= r {
            Tier::Reasoning
        } else if score >= c {
            Tier::Complex
        } else if score >= m {
            Tier::Medium
        } else {
            Tier::Simple
        }
    }

    /// Scores a last user turn with its bounded earlier context and request facts. Allocation
    /// free once the thread's n-gram buffer has grown to the longest text seen.
    pub fn score(&self, turn: &str, context: &str, facts: &RequestFacts) -> f32 {
        NGRAMS.with(|buf| {
            let mut buckets = buf.borrow_mut();
            buckets.clear();
            let mut ex =
                features::extract(&self.lexicon, turn, context, facts, self.hash_bits, &mut |b| buckets.push(b));
            buckets.sort_unstable();
            buckets.dedup();
            let (mut sum, mut norm) = (0f32, 0f32);
            let mut classes = [0f32; MAX_SUBJECTS];
            for &b in buckets.iter() {
                if let Some(e) = self.vocab.get(b) {
                    sum += e.w_idf;
                    norm += e.idf * e.idf;
                    self.subjects.add(e.lo, e.hi, e.idf, &mut classes);
                }
            }
            let scale = if norm > 0.0 { 1.0 / norm.sqrt() } else { 0.0 };
            let n = self.subjects.n;
            for (c, bias) in classes[..n].iter_mut().zip(&self.subjects.bias) {
                *c = bias + *c * scale;
            }
            features::subject_features(&classes[..n], &self.subjects.rates[..n], &mut ex.dense);
            sigmoid(self.logit(&ex.dense, sum * scale))
        })
    }

    /// The linear part: intercept, standardised dense features, and the hashed part (the
    /// n-gram weights' dot product with the text's L2-normalised idf vector).
    fn logit(&self, dense: &[f32; N_DENSE], hashed: f32) -> f32 {
        let mut z = self.intercept;
        for (x, (mean, inv_std, w)) in dense.iter().zip(&self.dense) {
            z += w * (x - mean) * inv_std;
        }
        z + hashed
    }

    /// Classifies a bare prompt (a single user turn, no context or request facts).
    pub fn classify_text(&self, prompt: &str) -> Classification {
        self.classification(self.score(prompt, "", &RequestFacts::default()))
    }

    /// Classifies a chat request body (OpenAI chat or Anthropic messages shape): the last user
    /// message, up to [`MAX_CONTEXT_BYTES`] of earlier user messages, the tool count and the
    /// requested output size. System prompts are never scored. A request without a user message
    /// scores as empty text.
    pub fn classify_request(&self, body: &[u8]) -> Result<Classification, ApiError> {
        let req: ChatRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("invalid_request_body", format!("request body: {e}")))?;
        let mut turn = String::new();
        let mut context = String::new();
        let mut earlier_turns = 0;
        if let Some(last) = req.messages.iter().rposition(|m| m.role == "user") {
            // System prompts are configuration, not conversation: they do not count as turns.
            earlier_turns = req.messages[..last].iter().filter(|m| m.role != "system" && m.role != "developer").count();
            append_text(&mut turn, req.messages[last].content, usize::MAX);
            for m in req.messages[..last].iter().rev().filter(|m| m.role == "user") {
                let room = MAX_CONTEXT_BYTES.saturating_sub(context.len());
                if room == 0 {
                    break;
                }
                append_text(&mut context, m.content, room);
            }
        }
        let facts = RequestFacts {
            tools: req.tools.map_or(0, |t| t.len()) + req.functions.map_or(0, |t| t.len()),
            max_output_tokens: req.max_completion_tokens.or(req.max_tokens).or(req.max_output_tokens),
            earlier_turns,
        };
        Ok(self.classification(self.score(&turn, &context, &facts)))
    }

    fn classification(&self, score: f32) -> Classification {
        Classification { tier: self.tier_for(score), score }
    }
}

thread_local! {
    /// Per-thread buffer of a request's n-gram buckets, reused so scoring does not allocate.
    static NGRAMS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// The request members the classifier reads; everything else is skipped unparsed.
#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow, default)]
    messages: Vec<Message<'a>>,
    #[serde(default)]
    tools: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    functions: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Cow<'a, str>,
    /// Kept raw: only the turns that are scored get parsed.
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

/// A content part; text parts are `text` (OpenAI, Anthropic) or `input_text` (Responses).
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// Appends a message's text (a string, or the text parts of an array, newline-joined) to `out`,
/// at most `room` bytes. Content that is neither is ignored: it is not user prose.
fn append_text(out: &mut String, content: Option<&RawValue>, room: usize) {
    let Some(raw) = content else { return };
    let push = |out: &mut String, s: &str| {
        let room = room.saturating_sub(out.len());
        if !out.is_empty() && room > 0 {
            out.push('\n');
        }
        let room = room.saturating_sub(1);
        out.push_str(&s[..features::floor_char_boundary(s, room)]);
    };
    if let Ok(s) = serde_json::from_str::<Cow<str>>(raw.get()) {
        push(out, &s);
    } else if let Ok(parts) = serde_json::from_str::<Vec<Part>>(raw.get()) {
        for p in parts.iter().filter(|p| p.kind == "text" || p.kind == "input_text") {
            if let Some(t) = &p.text {
                push(out, t);
            }
        }
    }
}

/// One `classify` input line: `{"id", "prompt"}` or a request-shaped `{"id", "messages", ...}`.
#[derive(Deserialize)]
struct ClassifyLine<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt: Option<Cow<'a, str>>,
}

/// `portcullis classify`: one JSON input line to one output line `{"id","tier","score"}`, by the
/// same code path as the gateway ([`RouterModel::classify_request`] for `messages` lines).
pub fn classify_line(model: &RouterModel, line: &str) -> Result<String, String> {
    let head: ClassifyLine = serde_json::from_str(line).map_err(|e| format!("invalid JSON line: {e}"))?;
    let c = match &head.prompt {
        Some(p) => model.classify_text(p),
        None => model.classify_request(line.as_bytes()).map_err(|e| e.message)?,
    };
    let id = head.id.map_or("null", |r| r.get());
    Ok(format!(r#"{{"id":{id},"tier":"{}","score":{:.4}}}"#, c.tier, c.score))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> RouterModel {
        RouterModel::embedded().expect("embedded model loads")
    }

    #[test]
    fn embedded_model_is_valid_and_versioned() {
        let m = model();
        assert_eq!(m.version(), MODEL_VERSION);
    }

    #[test]
    fn ngram_part_is_presence_weighted_and_length_normalised() {
        // The hashed part depends on which vocabulary n-grams occur, not how often: a prompt
        // pasted twice scores the same up to the length features.
        let mut file: ModelFile = serde_json::from_str(EMBEDDED_MODEL).expect("parses");
        file.features.iter_mut().for_each(|p| p.weight = 0.0);
        file.subjects = SubjectFile::default();
        let m = RouterModel::from_file(&file).expect("loads");
        let once = "Prove that the integral of the function converges for every positive value";
        let twice = format!("{once} {once}");
        let (a, b) = (m.classify_text(once).score, m.classify_text(&twice).score);
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        // A bucket listed twice, a subject weight outside the vocabulary, an idf of 0: refused.
        let mut bad = file.clone();
        let first = bad.hashed[0];
        bad.hashed.push(first);
        assert!(RouterModel::from_file(&bad).is_err());
        let mut bad = file.clone();
        bad.hashed[0].2 = 0.0;
        assert!(RouterModel::from_file(&bad).is_err());
        let mut bad: ModelFile = serde_json::from_str(EMBEDDED_MODEL).expect("parses");
        let (b, _, _) = bad.subjects.weights[0];
        bad.hashed.retain(|h| h.0 != b);
        assert!(RouterModel::from_file(&bad).is_err());
    }

    #[test]
    fn aliases() {
        assert_eq!(Tier::from_alias("CHEAP"), Some(Tier::Simple));
        assert_eq!(Tier::from_alias("balanced"), Some(Tier::Medium));
        assert_eq!(Tier::from_alias("Advanced"), Some(Tier::Complex));
        for a in ["max", "reasoning", "think", "deep"] {
            assert_eq!(Tier::from_alias(a), Some(Tier::Reasoning));
        }
        assert_eq!(Tier::from_alias("mode"), None);
    }

    #[test]
    fn system_prompt_alone_is_not_scored() {
        let m = model();
        let long_system = "Prove the theorem step by step with rigorous derivations. ".repeat(50);
        let with_system = serde_json::json!({"messages": [
            {"role": "system", "content": long_system},
            {"role": "user", "content": "hi"}
        ]});
        let plain = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
        let a = m.classify_request(with_system.to_string().as_bytes()).expect("classifies");
        let b = m.classify_request(plain.to_string().as_bytes()).expect("classifies");
        assert_eq!(a.score, b.score);
    }

    #[test]
    fn multi_turn_scores_last_user_turn_with_bounded_context() {
        let m = model();
        let huge = "x ".repeat(100_000);
        let req = serde_json::json!({"messages": [
            {"role": "user", "content": huge},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}, {"type": "image_url"}]}
        ]});
        let c = m.classify_request(req.to_string().as_bytes()).expect("classifies");
        assert!((0.0..=1.0).contains(&c.score));
        // The last turn, not the first, drives the length features: the huge first turn is
        // context and is cut to MAX_CONTEXT_BYTES.
        let only_last = serde_json::json!({"messages": [{"role": "user", "content": "What is 2+2?"}]});
        let d = m.classify_request(only_last.to_string().as_bytes()).expect("classifies");
        assert!((c.score - d.score).abs() < 0.5);
    }

    #[test]
    fn malformed_requests_do_not_panic() {
        let m = model();
        for body in [
            &b"not json"[..],
            b"{}",
            br#"{"messages": 3}"#,
            br#"{"messages": [{"role": "user", "content": 7}]}"#,
            br#"{"messages": [{"role": "user", "content": [1, {"type": "text"}]}]}"#,
            br#"{"messages": [{"role": 1}]}"#,
        ] {
            let _ = m.classify_request(body);
        }
        assert!(m.classify_request(br#"{"messages": []}"#).is_ok());
    }

    #[test]
    fn classify_line_both_shapes() {
        let m = model();
        let out = classify_line(&m, r#"{"id":"a1","prompt":"What is the capital of France?"}"#).expect("line");
        let v: serde_json::Value = serde_json::from_str(&out).expect("output is JSON");
        assert_eq!(v["id"], "a1");
        assert!(v["tier"].is_string() && v["score"].is_number());
        let out =
            classify_line(&m, r#"{"id":7,"messages":[{"role":"user","content":"hello"}],"tools":[{}]}"#).expect("line");
        let v: serde_json::Value = serde_json::from_str(&out).expect("output is JSON");
        assert_eq!(v["id"], 7);
        assert!(classify_line(&m, "{").is_err());
    }

    #[test]
    fn tiers_follow_thresholds() {
        let m = model();
        let [a, b, c] = m.thresholds;
        assert_eq!(m.tier_for(a - 1e-6), Tier::Simple);
        assert_eq!(m.tier_for(a), Tier::Medium);
        assert_eq!(m.tier_for(b), Tier::Complex);
        assert_eq!(m.tier_for(c.max(b)), Tier::Reasoning);
        assert_eq!(m.tier_for(1.0), Tier::Reasoning);
    }
}
