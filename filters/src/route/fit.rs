//! Fitting and evaluating the router model, in Rust so the fitter and the gateway share
//! [`features::extract`] and can never drift. Used by `examples/route_fit.rs` and
//! `examples/route_eval.rs`; pure (callers read the files).
//!
//! The fit is L2-regularised logistic regression, minimised by L-BFGS over standardised dense
//! features and binary TF-IDF hashed n-grams, on the routing gain (see [`Example::target`]).
//! Before it, a sparse naive-Bayes subject recogniser is fitted on the (source, subject) groups
//! (cross-fitted for the rows the logistic fit sees). Tier thresholds are score quantiles of the
//! training prompts.

use super::features::{self, Fit, Lexicon, RequestFacts, DENSE, MAX_SUBJECTS, N_DENSE};
use super::{DenseParam, ModelFile, RouterModel, SubjectFile, Thresholds, MODEL_FORMAT, MODEL_VERSION};
use serde::Deserialize;

/// Weights of the [`Fit::Prior`] features, written into every fitted file: the training data has
/// no tools, output limits or earlier turns, so these are judgement, not fit. Each adds to the
/// logit per unit of its (log-scaled) feature.
const PRIORS: [(&str, f32); 3] = [("tools_log", 0.35), ("max_output_log", 0.5), ("context_log", 0.25)];

/// One labelled prompt of the training file.
#[derive(Debug, Clone, Deserialize)]
pub struct Example {
    #[serde(default)]
    pub id: String,
    /// Where the prompt comes from (`gsm8k`, `mmlu`); metrics are reported per source.
    #[serde(default)]
    pub source: String,
    /// Finer grouping within a source (an MMLU subject, a product area); see
    /// [`FitParams::group_smoothing`].
    #[serde(default)]
    pub subject: String,
    pub prompt: String,
    pub weak_correct: bool,
    pub strong_correct: bool,
    pub needs_strong: bool,
}

impl Example {
    /// The fitted target: `needs_strong` as 0/1, or with [`FitParams::gain_target`] the routing
    /// gain `(1 + strong_correct − weak_correct) / 2` (1: only the strong model is right, 0: only
    /// the weak one is, ½: no difference).
    pub fn target(&self, gain: bool) -> f32 {
        if gain {
            (1.0 + f32::from(u8::from(self.strong_correct)) - f32::from(u8::from(self.weak_correct))) / 2.0
        } else {
            f32::from(u8::from(self.needs_strong))
        }
    }
}

/// Parses the training JSONL (one [`Example`] a line; blank lines skipped).
pub fn parse_examples(jsonl: &str) -> Result<Vec<Example>, String> {
    jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// Fitting hyper-parameters. Defaults are the ones the shipped model was fitted with.
#[derive(Debug, Clone, PartialEq)]
pub struct FitParams {
    pub hash_bits: u32,
    /// L-BFGS iterations at most (it usually converges before).
    pub max_iter: usize,
    /// L2 strength on dense weights, relative to the mean loss.
    pub l2_dense: f32,
    /// L2 strength on hashed n-gram weights, relative to the mean loss.
    pub l2_hashed: f32,
    /// Weight each source so that all sources weigh the same in the loss, whatever their size.
    pub balance_sources: bool,
    /// Share of each training target taken from its (source, subject) group's mean target instead of its own label. A single outcome is a noisy label (the weak model fails
    /// some easy prompts by chance); the group rate is the denoised difficulty, and the text
    /// features learn to recognise the group. Only the training file's labels are used: serving
    /// sees text alone.
    pub group_smoothing: f32,
    /// N-gram buckets present in fewer training prompts than this are not learned: a word seen
    /// once can only memorise its prompt, and dropping them keeps the model file small.
    pub min_df: u32,
    /// Hashed weights smaller than this in magnitude are dropped from the file.
    pub prune: f32,
    /// Cumulative traffic shares at the SIMPLE/MEDIUM, MEDIUM/COMPLEX and COMPLEX/REASONING
    /// boundaries (40/30/20/10 %).
    pub tier_quantiles: [f32; 3],
    pub seed: u64,
    /// Fit the routing gain instead of `needs_strong` (see [`Example::target`]). APGR credits a
    /// strong call with `strong_correct − weak_correct`, so prompts the weak model gets right
    /// and the strong one wrong should rank low, which the `needs_strong` target cannot say.
    pub gain_target: bool,
    /// Pseudo-count pulling each group's target rate towards the overall rate.
    pub subject_prior: f32,
    /// The stage-2 fit sees `subject_*` features from recognisers fitted on the other parts of
    /// the training data (this many parts), so it learns how far to trust an out-of-sample
    /// recognition rather than an in-sample (memorised) one. 0 or 1: in-sample.
    pub subject_folds: usize,
    /// Subject recogniser: buckets kept per class (0: no recogniser, `subject_*` features are 0)
    /// and the temperature its evidence is multiplied by.
    pub subject_top: usize,
    pub subject_temp: f32,
    /// Buckets whose log-lift for a class is at most this carry no weight for it.
    pub subject_min_lift: f32,
}

impl Default for FitParams {
    fn default() -> Self {
        FitParams {
            hash_bits: 20,
            max_iter: 500,
            l2_dense: 1e-4,
            l2_hashed: 1e-4,
            balance_sources: false,
            group_smoothing: 0.5,
            min_df: 2,
            prune: 0.02,
            tier_quantiles: [0.4, 0.7, 0.9],
            seed: 1,
            gain_target: true,
            subject_prior: 10.0,
            subject_folds: 3,
            subject_top: 1000,
            subject_temp: 3.0,
            subject_min_lift: 1.5,
        }
    }
}

impl FitParams {
    /// Applies `--name value` flags (`--bits --iters --l2-dense --l2-hashed --balance
    /// --prune --seed`); returns the arguments that are not flags.
    pub fn parse_args(&mut self, args: &[String]) -> Result<Vec<String>, String> {
        let mut rest = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                rest.push(a.clone());
                continue;
            };
            let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            let bad = |e: &dyn std::fmt::Display| format!("--{name} {v}: {e}");
            match name {
                "bits" => self.hash_bits = v.parse().map_err(|e| bad(&e))?,
                "iters" => self.max_iter = v.parse().map_err(|e| bad(&e))?,
                "l2-dense" => self.l2_dense = v.parse().map_err(|e| bad(&e))?,
                "l2-hashed" => self.l2_hashed = v.parse().map_err(|e| bad(&e))?,
                "balance" => self.balance_sources = v.parse().map_err(|e| bad(&e))?,
                "smooth" => self.group_smoothing = v.parse().map_err(|e| bad(&e))?,
                "min-df" => self.min_df = v.parse().map_err(|e| bad(&e))?,
                "prune" => self.prune = v.parse().map_err(|e| bad(&e))?,
                "seed" => self.seed = v.parse().map_err(|e| bad(&e))?,
                "gain" => self.gain_target = v.parse().map_err(|e| bad(&e))?,
                "subject-prior" => self.subject_prior = v.parse().map_err(|e| bad(&e))?,
                "subject-folds" => self.subject_folds = v.parse().map_err(|e| bad(&e))?,
                "subject-top" => self.subject_top = v.parse().map_err(|e| bad(&e))?,
                "subject-min-lift" => self.subject_min_lift = v.parse().map_err(|e| bad(&e))?,
                "subject-temp" => self.subject_temp = v.parse().map_err(|e| bad(&e))?,
                _ => return Err(format!("unknown flag --{name}")),
            }
        }
        if !(8..=24).contains(&self.hash_bits) {
            return Err("--bits must be in 8..=24".into());
        }
        Ok(rest)
    }
}

/// A featurised prompt: raw dense features and its distinct n-gram buckets with their values
/// (1 until [`fit`] knows the vocabulary, then the normalised idf weights serving computes).
struct Row {
    dense: [f32; N_DENSE],
    hashed: Vec<(u32, f32)>,
}

fn featurize(lex: &Lexicon, text: &str, bits: u32) -> Row {
    let mut buckets = Vec::new();
    let ex = features::extract(lex, text, "", &RequestFacts::default(), bits, &mut |b| buckets.push(b));
    buckets.sort_unstable();
    buckets.dedup();
    Row { dense: ex.dense, hashed: buckets.into_iter().map(|b| (b, 1.0)).collect() }
}

/// Smoothed inverse document frequency, as scikit-learn's `TfidfVectorizer` computes it.
fn idf(df: u32, n: usize) -> f32 {
    ((1.0 + n as f32) / (1.0 + df as f32)).ln() + 1.0
}

/// Deterministic xorshift, so a refit on the same data gives the same file.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// The recogniser's class of an example: `source/subject`, or `source` without a subject.
fn group_name(e: &Example) -> String {
    if e.subject.is_empty() {
        e.source.clone()
    } else {
        format!("{}/{}", e.source, e.subject)
    }
}

/// Recogniser classes: the groups, sorted by name; beyond [`MAX_SUBJECTS`] the smallest groups
/// share one `other` class. Returns the names and each example's class.
fn subject_classes(examples: &[Example]) -> (Vec<String>, Vec<u8>) {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for e in examples {
        *counts.entry(group_name(e)).or_default() += 1;
    }
    let mut names: Vec<String> = counts.keys().cloned().collect();
    if names.len() > MAX_SUBJECTS {
        let mut by_size: Vec<(&String, &usize)> = counts.iter().collect();
        by_size.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        names = by_size[..MAX_SUBJECTS - 1].iter().map(|(n, _)| (*n).clone()).collect();
        names.sort();
        names.push("other".into());
    }
    let class = examples
        .iter()
        .map(|e| {
            let g = group_name(e);
            names.iter().position(|n| *n == g).unwrap_or(names.len() - 1) as u8
        })
        .collect();
    (names, class)
}

/// A fitted recogniser in training form: per bucket, its `(class, weight)` pairs.
struct Recogniser {
    k: usize,
    bias: Vec<f32>,
    w: std::collections::BTreeMap<u32, Vec<(u8, f32)>>,
    rates: Vec<f32>,
}

impl Recogniser {
    fn scores(&self, row: &Row, out: &mut [f32; MAX_SUBJECTS]) {
        out[..self.k].copy_from_slice(&self.bias);
        for (j, v) in &row.hashed {
            for (c, w) in self.w.get(j).map_or(&[][..], Vec::as_slice) {
                out[*c as usize] += v * w;
            }
        }
    }

    fn features(&self, row: &Row, dense: &mut [f32; N_DENSE]) {
        let mut s = [0f32; MAX_SUBJECTS];
        self.scores(row, &mut s);
        features::subject_features(&s[..self.k], &self.rates, dense);
    }
}

/// Fits the recogniser as a sparse naive Bayes on `rows[idx]`: per class, the `subject_top`
/// buckets with the most evidence for it (presence in at least 2 of its prompts, weight the
/// log-lift of its presence rate over the overall presence rate); class score = log prior +
/// `subject_temp` × the lifts of the present buckets, scaled like the hashed n-grams. Sparse by
/// construction, so the file stays small; deterministic (counting, no SGD).
fn fit_recogniser(
    rows: &[Row],
    class: &[u8],
    labels: &[f32],
    k: usize,
    idx: &[usize],
    params: &FitParams,
) -> Recogniser {
    let size = 1usize << params.hash_bits;
    let mut n_bc: std::collections::HashMap<(u32, u8), f32> = std::collections::HashMap::new();
    let mut n_b = vec![0f32; size];
    let (mut pos, mut cnt) = (vec![0f32; k], vec![0f32; k]);
    for &i in idx {
        let c = class[i];
        cnt[c as usize] += 1.0;
        pos[c as usize] += labels[i];
        for (j, _) in &rows[i].hashed {
            *n_bc.entry((*j, c)).or_default() += 1.0;
            n_b[*j as usize] += 1.0;
        }
    }
    let total = idx.len().max(1) as f32;
    let base = pos.iter().sum::<f32>() / total;
    let a = params.subject_prior.max(0.0);
    let rates = (0..k).map(|c| (pos[c] + a * base) / (cnt[c] + a).max(1e-6)).collect();
    let bias = (0..k).map(|c| (cnt[c].max(0.5) / total).ln()).collect();
    let alpha = 0.5f32;
    let mut per_class: Vec<Vec<(f32, u32, f32)>> = vec![Vec::new(); k];
    for (&(j, c), &n) in &n_bc {
        if n < 2.0 {
            continue;
        }
        let p_c = (n + alpha) / (cnt[c as usize] + 2.0 * alpha);
        let p = (n_b[j as usize] + alpha) / (total + 2.0 * alpha);
        let lift = (p_c / p).ln();
        if lift > params.subject_min_lift.max(0.0) {
            per_class[c as usize].push((lift * n.sqrt(), j, lift));
        }
    }
    let mut w: std::collections::BTreeMap<u32, Vec<(u8, f32)>> = std::collections::BTreeMap::new();
    for (c, mut v) in per_class.into_iter().enumerate() {
        v.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        for (_, j, lift) in v.into_iter().take(params.subject_top) {
            w.entry(j).or_default().push((c as u8, params.subject_temp * lift));
        }
    }
    Recogniser { k, bias, w, rates }
}

/// Fits a model file on `examples`. `provenance` is stored under `trained`.
pub fn fit(examples: &[Example], params: &FitParams, provenance: serde_json::Value) -> Result<ModelFile, String> {
    if examples.is_empty() {
        return Err("no training examples".into());
    }
    let lex = Lexicon::new()?;
    let mut rows: Vec<Row> = examples.iter().map(|e| featurize(&lex, &e.prompt, params.hash_bits)).collect();
    let mut df = vec![0u32; 1usize << params.hash_bits];
    for r in &rows {
        for (j, _) in &r.hashed {
            df[*j as usize] += 1;
        }
    }
    let idfs: Vec<f32> = df.iter().map(|&d| if d >= params.min_df.max(1) { idf(d, rows.len()) } else { 0.0 }).collect();
    for r in &mut rows {
        r.hashed.retain(|(j, _)| idfs[*j as usize] > 0.0);
        let norm = r.hashed.iter().map(|(j, _)| idfs[*j as usize].powi(2)).sum::<f32>().sqrt();
        for (j, v) in &mut r.hashed {
            *v = idfs[*j as usize] / norm;
        }
    }

    // Subject recogniser: the file keeps the one fitted on everything; the rows the stage-2 fit
    // sees carry out-of-part recognitions (see `FitParams::subject_folds`).
    let mut subjects = SubjectFile::default();
    if params.subject_top > 0 {
        let (names, class) = subject_classes(examples);
        let k = names.len();
        let labels: Vec<f32> = examples.iter().map(|e| e.target(params.gain_target)).collect();
        let all: Vec<usize> = (0..rows.len()).collect();
        let full = fit_recogniser(&rows, &class, &labels, k, &all, params);
        if params.subject_folds >= 2 {
            let parts = folds(examples, params.subject_folds, params.seed ^ 0xf01d);
            for f in 0..params.subject_folds {
                let train: Vec<usize> = all.iter().copied().filter(|i| parts[*i] != f).collect();
                let rec = fit_recogniser(&rows, &class, &labels, k, &train, params);
                for i in all.iter().copied().filter(|i| parts[*i] == f) {
                    let mut d = rows[i].dense;
                    rec.features(&rows[i], &mut d);
                    rows[i].dense = d;
                }
            }
        } else {
            for r in &mut rows {
                let mut d = r.dense;
                full.features(r, &mut d);
                r.dense = d;
            }
        }
        let round = |x: f32| (x * 1e4).round() / 1e4;
        let mut weights = Vec::new();
        for (j, ws) in &full.w {
            for (c, w) in ws {
                weights.push((*j, *c, round(*w)));
            }
        }
        subjects = SubjectFile {
            names,
            rates: full.rates.iter().map(|r| round(*r)).collect(),
            bias: full.bias.iter().map(|b| round(*b)).collect(),
            weights,
        };
    }

    // Standardisation of the fitted dense features; priors enter raw.
    let n = rows.len() as f32;
    let mut mean = [0f32; N_DENSE];
    let mut std = [1f32; N_DENSE];
    for (i, (_, kind)) in DENSE.iter().enumerate() {
        if *kind == Fit::Prior {
            continue;
        }
        let m = rows.iter().map(|r| r.dense[i]).sum::<f32>() / n;
        let var = rows.iter().map(|r| (r.dense[i] - m).powi(2)).sum::<f32>() / n;
        mean[i] = m;
        std[i] = if var > 1e-12 { var.sqrt() } else { 1.0 };
    }

    // Per-example weights: equal total weight per source when balancing.
    let weights: Vec<f32> = if params.balance_sources {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for e in examples {
            match counts.iter_mut().find(|(s, _)| *s == e.source) {
                Some((_, c)) => *c += 1,
                None => counts.push((&e.source, 1)),
            }
        }
        let per_source = n / counts.len() as f32;
        examples
            .iter()
            .map(|e| counts.iter().find(|(s, _)| *s == e.source).map_or(1.0, |(_, c)| per_source / *c as f32))
            .collect()
    } else {
        vec![1.0; rows.len()]
    };

    // Soft targets: label blended with the group's rate.
    let mut groups: Vec<((&str, &str), f32, f32)> = Vec::new();
    for e in examples {
        let key = (e.source.as_str(), e.subject.as_str());
        let y = e.target(params.gain_target);
        match groups.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, sum, count)) => {
                *sum += y;
                *count += 1.0;
            }
            None => groups.push((key, y, 1.0)),
        }
    }
    let s = params.group_smoothing.clamp(0.0, 1.0);
    let targets: Vec<f32> = examples
        .iter()
        .map(|e| {
            let key = (e.source.as_str(), e.subject.as_str());
            let rate = groups.iter().find(|(k, _, _)| *k == key).map_or(0.0, |(_, sum, c)| sum / c);
            (1.0 - s) * e.target(params.gain_target) + s * rate
        })
        .collect();

    let base_rate = examples.iter().map(|e| e.target(params.gain_target)).sum::<f32>() / n;
    let (wd, wh, b) =
        fit_logistic(&rows, &targets, &weights, &mean, &std, base_rate, 1usize << params.hash_bits, params);

    let round = |x: f32| (x * 1e5).round() / 1e5;
    let features = DENSE
        .iter()
        .enumerate()
        .map(|(i, (name, kind))| DenseParam {
            name: name.to_string(),
            mean: round(mean[i]),
            std: round(std[i]).max(1e-5),
            weight: round(wd[i]),
            fitted: *kind == Fit::Fitted,
        })
        .collect();
    // Every vocabulary bucket stays in the file (its idf counts in the norm); small weights
    // are written as 0.
    let hashed = wh
        .iter()
        .zip(&idfs)
        .enumerate()
        .filter(|(_, (_, idf))| **idf > 0.0)
        .map(|(j, (w, idf))| {
            let w = if w.abs() >= params.prune { (w * 1e4).round() / 1e4 } else { 0.0 };
            (j as u32, w, (idf * 1e4).round() / 1e4)
        })
        .collect();
    let mut file = ModelFile {
        format: MODEL_FORMAT.into(),
        version: MODEL_VERSION,
        hash_bits: params.hash_bits,
        intercept: round(b),
        features,
        hashed,
        subjects,
        tiers: Thresholds { rule: String::new(), medium: 0.0, complex: 0.0, reasoning: 0.0 },
        trained: provenance,
    };
    // Thresholds from the scores of the finished model, through the serving code path.
    let model = RouterModel::from_file(&file)?;
    let mut scores: Vec<f32> = examples.iter().map(|e| model.classify_text(&e.prompt).score).collect();
    scores.sort_unstable_by(f32::total_cmp);
    let q = |share: f32| {
        let i = ((share * scores.len() as f32) as usize).min(scores.len() - 1);
        (scores[i] * 1e4).round() / 1e4
    };
    let [a, c, r] = params.tier_quantiles;
    file.tiers = Thresholds {
        rule: format!(
            "training-score quantiles {a}/{c}/{r}: about {:.0}/{:.0}/{:.0}/{:.0} % of training prompts land in \
             simple/medium/complex/reasoning",
            a * 100.0,
            (c - a) * 100.0,
            (r - c) * 100.0,
            (1.0 - r) * 100.0
        ),
        medium: q(a),
        complex: q(c),
        reasoning: q(r),
    };
    Ok(file)
}

/// Fits intercept, fitted dense weights and hashed weights by L-BFGS on the weighted mean
/// logistic loss plus `l2_dense/2 ‖w_dense‖² + l2_hashed/2 ‖w_hashed‖²`. Prior weights are held
/// at [`PRIORS`]. Returns `(dense weights, hashed weights per bucket, intercept)`.
#[allow(clippy::too_many_arguments)]
fn fit_logistic(
    rows: &[Row],
    targets: &[f32],
    weights: &[f32],
    mean: &[f32; N_DENSE],
    std: &[f32; N_DENSE],
    base_rate: f32,
    size: usize,
    params: &FitParams,
) -> ([f32; N_DENSE], Vec<f32>, f32) {
    // Parameters: [intercept, dense..., one per vocabulary bucket...].
    let mut vocab = vec![u32::MAX; size];
    let mut buckets: Vec<u32> = Vec::new();
    for r in rows {
        for (j, _) in &r.hashed {
            if vocab[*j as usize] == u32::MAX {
                vocab[*j as usize] = buckets.len() as u32;
                buckets.push(*j);
            }
        }
    }
    let xs: Vec<[f64; N_DENSE]> =
        rows.iter().map(|r| std::array::from_fn(|i| f64::from((r.dense[i] - mean[i]) / std[i]))).collect();
    let hs: Vec<Vec<(usize, f64)>> = rows
        .iter()
        .map(|r| r.hashed.iter().map(|(j, v)| (1 + N_DENSE + vocab[*j as usize] as usize, f64::from(*v))).collect())
        .collect();
    let fitted: [bool; N_DENSE] = std::array::from_fn(|i| DENSE[i].1 == Fit::Fitted);
    let total_weight: f64 = weights.iter().map(|w| f64::from(*w)).sum::<f64>().max(1e-12);
    let (l2d, l2h) = (f64::from(params.l2_dense), f64::from(params.l2_hashed));

    let mut theta = vec![0f64; 1 + N_DENSE + buckets.len()];
    let p0 = f64::from(base_rate.clamp(1e-3, 1.0 - 1e-3));
    theta[0] = (p0 / (1.0 - p0)).ln();
    for (i, (name, kind)) in DENSE.iter().enumerate() {
        if *kind == Fit::Prior {
            theta[1 + i] = PRIORS.iter().find(|(p, _)| p == name).map_or(0.0, |(_, w)| f64::from(*w));
        }
    }
    let objective = |t: &[f64], g: &mut [f64]| -> f64 {
        g.iter_mut().for_each(|v| *v = 0.0);
        let mut loss = 0.0;
        for k in 0..rows.len() {
            let mut z = t[0];
            for i in 0..N_DENSE {
                z += t[1 + i] * xs[k][i];
            }
            for &(j, v) in &hs[k] {
                z += t[j] * v;
            }
            let (y, sw) = (f64::from(targets[k]), f64::from(weights[k]) / total_weight);
            // log(1 + e^z) - y z, computed without overflow.
            loss += sw * (z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z);
            let r = sw * (1.0 / (1.0 + (-z).exp()) - y);
            g[0] += r;
            for i in 0..N_DENSE {
                g[1 + i] += r * xs[k][i];
            }
            for &(j, v) in &hs[k] {
                g[j] += r * v;
            }
        }
        for i in 0..N_DENSE {
            if fitted[i] {
                loss += 0.5 * l2d * t[1 + i] * t[1 + i];
                g[1 + i] += l2d * t[1 + i];
            } else {
                g[1 + i] = 0.0;
            }
        }
        for j in 1 + N_DENSE..t.len() {
            loss += 0.5 * l2h * t[j] * t[j];
            g[j] += l2h * t[j];
        }
        loss
    };
    super::lbfgs::minimize(objective, &mut theta, params.max_iter, 1e-9);

    let wd = std::array::from_fn(|i| theta[1 + i] as f32);
    let mut wh = vec![0f32; size];
    for (k, &j) in buckets.iter().enumerate() {
        wh[j as usize] = theta[1 + N_DENSE + k] as f32;
    }
    (wd, wh, theta[0] as f32)
}

/// Routing quality of one score vector, as RouteLLM measures it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteMetrics {
    pub n: usize,
    /// Average performance gap recovered: the area under PGR(p) for the share p of calls sent
    /// to the strong model (highest scores first), p from 0 to 1.
    pub apgr: f64,
    /// AUROC of the score against `needs_strong`.
    pub auroc: f64,
    /// Call-performance threshold: the smallest share of strong calls that reaches 50 % / 80 % of
    /// the gap.
    pub cpt50: f64,
    pub cpt80: f64,
}

/// Computes [`RouteMetrics`]. Tied scores form one step whose prompts go to the strong model
/// together, with the curve linear across the step (the expectation over tie orders).
pub fn route_metrics(scores: &[f32], examples: &[&Example]) -> RouteMetrics {
    let n = scores.len().min(examples.len());
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let weak: f64 = examples[..n].iter().filter(|e| e.weak_correct).count() as f64;
    let strong: f64 = examples[..n].iter().filter(|e| e.strong_correct).count() as f64;
    let gap = strong - weak;
    // Curve points (share of strong calls, PGR) at tie-group boundaries.
    let mut pts = vec![(0f64, 0f64)];
    let mut quality = weak;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j < n && scores[idx[j]] == scores[idx[i]] {
            let e = examples[idx[j]];
            quality += f64::from(u8::from(e.strong_correct)) - f64::from(u8::from(e.weak_correct));
            j += 1;
        }
        pts.push((j as f64 / n as f64, (quality - weak) / gap));
        i = j;
    }
    let apgr = pts.windows(2).map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0).sum();
    let cpt = |target: f64| {
        pts.windows(2).find(|w| w[1].1 >= target).map_or(1.0, |w| {
            let (x0, y0, x1, y1) = (w[0].0, w[0].1, w[1].0, w[1].1);
            if y0 >= target {
                x0
            } else {
                x0 + (x1 - x0) * (target - y0) / (y1 - y0)
            }
        })
    };
    let labels: Vec<bool> = examples[..n].iter().map(|e| e.needs_strong).collect();
    RouteMetrics { n, apgr, auroc: auroc(&scores[..n], &labels), cpt50: cpt(0.5), cpt80: cpt(0.8) }
}

/// AUROC by the rank-sum (Mann–Whitney) statistic, ties at their average rank.
pub fn auroc(scores: &[f32], labels: &[bool]) -> f64 {
    let n = scores.len().min(labels.len());
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j < n && scores[idx[j]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0;
        rank_sum += avg * idx[i..j].iter().filter(|k| labels[**k]).count() as f64;
        i = j;
    }
    let pos = labels[..n].iter().filter(|l| **l).count() as f64;
    let neg = n as f64 - pos;
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Stratified k-fold assignment (by source and label), deterministic in `seed`.
pub fn folds(examples: &[Example], k: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng(seed.max(1));
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    rng.shuffle(&mut idx);
    idx.sort_by(|a, b| {
        let (x, y) = (&examples[*a], &examples[*b]);
        (x.source.as_str(), x.needs_strong).cmp(&(y.source.as_str(), y.needs_strong))
    });
    let mut out = vec![0; examples.len()];
    for (pos, i) in idx.into_iter().enumerate() {
        out[i] = pos % k.max(1);
    }
    out
}

/// Scores drawn from `seed`, for the random baseline.
pub fn random_scores(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed.max(1));
    (0..n).map(|_| (rng.next() >> 40) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(weak: bool, strong: bool) -> Example {
        Example {
            id: String::new(),
            source: "s".into(),
            subject: String::new(),
            prompt: String::new(),
            weak_correct: weak,
            strong_correct: strong,
            needs_strong: !weak && strong,
        }
    }

    #[test]
    fn perfect_and_inverted_routers() {
        let data = [ex(false, true), ex(false, true), ex(true, true), ex(true, true), ex(false, false)];
        let refs: Vec<&Example> = data.iter().collect();
        let perfect = route_metrics(&[0.9, 0.8, 0.1, 0.1, 0.1], &refs);
        assert!((perfect.apgr - 0.8).abs() < 1e-9, "{perfect:?}");
        assert!((perfect.cpt50 - 0.2).abs() < 1e-9 && (perfect.cpt80 - 0.32).abs() < 1e-9, "{perfect:?}");
        assert_eq!(perfect.auroc, 1.0);
        let worst = route_metrics(&[0.1, 0.1, 0.9, 0.9, 0.9], &refs);
        assert!(worst.apgr < 0.5 && worst.auroc == 0.0);
        // All tied: the straight line, APGR one half.
        let tied = route_metrics(&[0.5; 5], &refs);
        assert!((tied.apgr - 0.5).abs() < 1e-9 && (tied.auroc - 0.5).abs() < 1e-9);
    }

    #[test]
    fn fit_learns_a_separable_signal_and_writes_a_loadable_file() {
        let mut data = Vec::new();
        for i in 0..200 {
            let hard = i % 3 == 0;
            let mut e = ex(!hard, true);
            e.prompt = if hard { format!("prove the theorem about matrix {i}") } else { format!("hello there {i}") };
            data.push(e);
        }
        let params = FitParams { hash_bits: 12, ..Default::default() };
        let file = fit(&data, &params, serde_json::Value::Null).expect("fits");
        let model = RouterModel::from_file(&file).expect("loads");
        let json = serde_json::to_string(&file).expect("serialises");
        assert!(RouterModel::from_json(&json).is_ok());
        let hard = model.classify_text("prove the theorem about matrix 5").score;
        let easy = model.classify_text("hello there 5").score;
        assert!(hard > easy, "{hard} > {easy}");
        assert!(file.tiers.medium <= file.tiers.complex && file.tiers.complex <= file.tiers.reasoning);
    }

    #[test]
    fn recogniser_reads_the_subject_and_its_rate() {
        // Two subjects with different vocabulary and rates; no other signal.
        let mut data = Vec::new();
        for i in 0..300 {
            let hard = i % 2 == 0;
            let mut e = ex(!(hard && i % 3 != 0), true);
            e.subject = if hard { "law".into() } else { "poetry".into() };
            e.prompt = if hard {
                format!("the plaintiff sued the defendant in court case {}", i % 7)
            } else {
                format!("the poem rhymes in the sonnet verse {}", i % 7)
            };
            data.push(e);
        }
        // Two equal classes: a lift is at most ln 2, below the default floor.
        let params = FitParams { hash_bits: 12, subject_min_lift: 0.3, ..Default::default() };
        let file = fit(&data, &params, serde_json::Value::Null).expect("fits");
        assert_eq!(file.subjects.names, ["s/law", "s/poetry"]);
        assert!(file.subjects.rates[0] > file.subjects.rates[1] && !file.subjects.weights.is_empty());
        // The recogniser alone ranks an unseen law prompt above an unseen poetry prompt.
        let mut alone = file.clone();
        alone.hashed.iter_mut().for_each(|h| h.1 = 0.0);
        for p in &mut alone.features {
            p.weight = if p.name == "subject_rate" { 1.0 } else { 0.0 };
        }
        let m = RouterModel::from_file(&alone).expect("loads");
        let law = m.classify_text("a defendant and a plaintiff in court").score;
        let poem = m.classify_text("a sonnet poem that rhymes").score;
        assert!(law > poem, "{law} > {poem}");
        // Out-of-range recogniser entries are refused.
        let mut bad = file.clone();
        bad.subjects.weights.push((0, 9, 1.0));
        assert!(RouterModel::from_file(&bad).is_err());
        let mut bad = file;
        bad.subjects.rates.pop();
        assert!(RouterModel::from_file(&bad).is_err());
    }

    #[test]
    fn folds_are_balanced() {
        let data: Vec<Example> = (0..100).map(|i| ex(i % 2 == 0, true)).collect();
        let f = folds(&data, 5, 3);
        for k in 0..5 {
            assert_eq!(f.iter().filter(|x| **x == k).count(), 20);
        }
    }
}
