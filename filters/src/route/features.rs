//! The one feature extractor. The gateway, `route_fit` and `route_eval` all call [`extract`], so
//! the features a model was fitted on are by construction the features it is served with.
//!
//! Two kinds of feature come out of a text:
//! - dense features ([`DENSE`]): length and structure, quantities, code, maths, multi-step and
//!   constraint markers, domain vocabulary, multiple-choice layout, and request facts (tools,
//!   requested output size, earlier turns);
//! - hashed word unigrams and bigrams, reported one bucket at a time to a callback so that
//!   serving accumulates a dot product without allocating and fitting collects a sparse row.
//!
//! Vocabulary is matched with one Aho-Corasick automaton and a word-boundary check on every
//! alphanumeric pattern edge, so "Hamlet" is not `let` and "important" is not `import`.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

/// Bytes of the last user turn that are scanned: the head and the tail (questions tend to sit at
/// the end of a long paste). Bounds the work per request whatever the body size.
pub const MAX_TURN_BYTES: usize = 32 * 1024;
/// Bytes of the tail kept when a turn is longer than [`MAX_TURN_BYTES`].
const TAIL_BYTES: usize = 8 * 1024;
/// Bytes of earlier user turns (most recent first) scanned as context.
pub const MAX_CONTEXT_BYTES: usize = 2 * 1024;
/// How many distinct numbers are tracked for `distinct_numbers`; more saturates the count.
const MAX_DISTINCT_NUMBERS: usize = 32;

/// Facts about the request that are not in its text.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestFacts {
    /// Number of tool/function definitions in the request.
    pub tools: usize,
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens`, when given.
    pub max_output_tokens: Option<u64>,
    /// Number of earlier non-system messages before the last user turn.
    pub earlier_turns: usize,
}

/// Whether a dense feature's weight is fitted, or a fixed prior the fitter leaves alone because
/// the training data cannot carry it (single-turn prompts without tools or output limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    Fitted,
    Prior,
}

/// Dense feature names, in the order of [`Extracted::dense`]. The model file lists the names it
/// was fitted with and loading refuses a file whose list differs, so the two never drift.
pub const DENSE: [(&str, Fit); 36] = [
    ("chars_log", Fit::Fitted),
    ("words_log", Fit::Fitted),
    ("sentences_log", Fit::Fitted),
    ("lines_log", Fit::Fitted),
    ("numbers_log", Fit::Fitted),
    ("distinct_numbers_log", Fit::Fitted),
    ("money_percent_log", Fit::Fitted),
    ("arith_ops_log", Fit::Fitted),
    ("math_words_log", Fit::Fitted),
    ("quantity_words_log", Fit::Fitted),
    ("step_markers_log", Fit::Fitted),
    ("constraint_log", Fit::Fitted),
    ("code_log", Fit::Fitted),
    ("code_fence", Fit::Fitted),
    ("code_punct_ratio", Fit::Fitted),
    ("reasoning_log", Fit::Fitted),
    ("output_size_log", Fit::Fitted),
    ("question_marks_log", Fit::Fitted),
    ("multiple_choice", Fit::Fitted),
    ("mc_options_chars_log", Fit::Fitted),
    ("mc_stem_chars_log", Fit::Fitted),
    ("negation_log", Fit::Fitted),
    ("law_log", Fit::Fitted),
    ("medicine_log", Fit::Fitted),
    ("science_log", Fit::Fitted),
    ("econ_log", Fit::Fitted),
    ("cs_log", Fit::Fitted),
    ("avg_word_len", Fit::Fitted),
    ("long_words_ratio", Fit::Fitted),
    ("tools_log", Fit::Prior),
    ("max_output_log", Fit::Prior),
    ("context_log", Fit::Prior),
    ("subject_rate", Fit::Fitted),
    ("subject_conf", Fit::Fitted),
    ("mc_numeric_options_log", Fit::Fitted),
    ("mc_option_digits_log", Fit::Fitted),
];

/// Index of `subject_rate` in [`DENSE`]: the logit of the `needs_strong` rate of the subject the
/// model's recogniser reads in the text (the posterior-weighted mean of the subjects' training
/// rates). Filled by [`subject_features`], not by [`extract`].
pub const SUBJECT_RATE: usize = 32;
/// Index of `subject_conf` in [`DENSE`]: the recogniser's highest posterior.
pub const SUBJECT_CONF: usize = 33;
/// Most subjects a recogniser may have (class scores live in a stack array while scoring).
pub const MAX_SUBJECTS: usize = 64;

/// Turns a subject recogniser's class scores into the `subject_rate` and `subject_conf`
/// features: softmax over `scores`, then the posterior-weighted mean of `rates` (as a logit) and
/// the highest posterior. Both zero when there is no recogniser. The gateway and the fitter both
/// call this, so the features are the same function in both.
pub fn subject_features(scores: &[f32], rates: &[f32], dense: &mut [f32; N_DENSE]) {
    let n = scores.len().min(rates.len());
    if n == 0 {
        dense[SUBJECT_RATE] = 0.0;
        dense[SUBJECT_CONF] = 0.0;
        return;
    }
    let max = scores[..n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut z, mut r, mut top) = (0f32, 0f32, 0f32);
    for (s, rate) in scores[..n].iter().zip(rates) {
        let e = (s - max).exp();
        z += e;
        r += e * rate;
        top = top.max(e);
    }
    let r = (r / z).clamp(1e-4, 1.0 - 1e-4);
    dense[SUBJECT_RATE] = (r / (1.0 - r)).ln();
    dense[SUBJECT_CONF] = top / z;
}

/// Number of dense features.
pub const N_DENSE: usize = DENSE.len();

/// Vocabulary categories counted by the automaton; each maps to one dense feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cat {
    MathWords,
    QuantityWords,
    StepMarkers,
    Constraint,
    Code,
    Reasoning,
    OutputSize,
    Negation,
    Law,
    Medicine,
    Science,
    Econ,
    Cs,
}

impl Cat {
    fn dense_index(self) -> usize {
        match self {
            Cat::MathWords => 8,
            Cat::QuantityWords => 9,
            Cat::StepMarkers => 10,
            Cat::Constraint => 11,
            Cat::Code => 12,
            Cat::Reasoning => 15,
            Cat::OutputSize => 16,
            Cat::Negation => 21,
            Cat::Law => 22,
            Cat::Medicine => 23,
            Cat::Science => 24,
            Cat::Econ => 25,
            Cat::Cs => 26,
        }
    }
}

/// Vocabulary per category. Phrases match case-insensitively on word boundaries.
const VOCAB: &[(Cat, &[&str])] = &[
    (
        Cat::MathWords,
        &[
            "equation",
            "equations",
            "integral",
            "derivative",
            "theorem",
            "prove",
            "proof",
            "matrix",
            "matrices",
            "probability",
            "polynomial",
            "eigenvalue",
            "eigenvalues",
            "sqrt",
            "logarithm",
            "factorial",
            "prime",
            "modulo",
            "divisible",
            "remainder",
            "inequality",
            "vector",
            "variance",
            "expected value",
            "\\frac",
            "\\sum",
            "\\int",
            "$$",
            "lcm",
            "gcd",
            "ratio",
            "average",
            "fraction",
            "square root",
            "group",
            "ring",
            "field",
            "isomorphic",
            "homomorphism",
            "permutation",
            "combinatorics",
            "limit",
        ],
    ),
    (
        Cat::QuantityWords,
        &[
            "half",
            "twice",
            "double",
            "triple",
            "thrice",
            "quarter",
            "third",
            "percent",
            "each",
            "per",
            "every",
            "times",
            "total",
            "remaining",
            "left over",
            "more than",
            "less than",
            "fewer than",
            "the rest",
            "altogether",
            "combined",
            "difference",
            "discount",
            "profit",
            "cost",
            "costs",
            "spend",
            "spent",
            "earn",
            "earns",
            "hours",
            "minutes",
            "dozen",
            "weekly",
            "daily",
            "monthly",
            "rate",
            "speed",
        ],
    ),
    (
        Cat::StepMarkers,
        &[
            "first",
            "then",
            "after",
            "afterwards",
            "finally",
            "next",
            "step by step",
            "step-by-step",
            "later",
            "before",
            "until",
            "meanwhile",
            "subsequently",
            "followed by",
            "in turn",
            "initially",
            "eventually",
        ],
    ),
    (
        Cat::Constraint,
        &[
            "must",
            "exactly",
            "at least",
            "at most",
            "without",
            "only",
            "no more than",
            "no less than",
            "ensure",
            "do not",
            "don't",
            "never",
            "required",
            "requirement",
            "constraint",
            "constraints",
            "strictly",
            "maximum",
            "minimum",
            "unless",
            "provided that",
        ],
    ),
    (
        Cat::Code,
        &[
            "```",
            "def",
            "fn",
            "impl",
            "class",
            "import",
            "return",
            "#include",
            "function",
            "const",
            "let",
            "var",
            "public static",
            "println",
            "printf",
            "console.log",
            "=>",
            "->",
            "::",
            "();",
            "{}",
            "lambda",
            "async",
            "await",
            "struct",
            "select *",
            "group by",
            "order by",
            "traceback",
            "exception",
            "stack trace",
            "compile",
            "compiler",
            "regex",
            "json",
            "yaml",
            "api",
            "sql",
            "python",
            "javascript",
            "typescript",
            "rust",
            "java",
            "c++",
            "golang",
            "kubernetes",
            "docker",
            "bash",
            "refactor",
            "debug",
            "bug",
        ],
    ),
    (
        Cat::Reasoning,
        &[
            "why",
            "explain",
            "derive",
            "analyze",
            "analyse",
            "compare",
            "evaluate",
            "justify",
            "reason",
            "reasoning",
            "implications",
            "trade-off",
            "tradeoff",
            "trade-offs",
            "critique",
            "assess",
            "infer",
            "deduce",
            "hypothesis",
            "most likely",
            "best explains",
            "which of the following",
        ],
    ),
    (
        Cat::OutputSize,
        &[
            "essay",
            "detailed",
            "in detail",
            "comprehensive",
            "thorough",
            "list all",
            "report",
            "words",
            "pages",
            "paragraphs",
            "full implementation",
            "complete code",
            "long",
            "elaborate",
            "in depth",
            "in-depth",
            "outline",
            "plan",
        ],
    ),
    (
        Cat::Negation,
        &["not", "except", "least", "false", "incorrect", "none", "neither", "nor", "cannot", "isn't", "wrong"],
    ),
    (
        Cat::Law,
        &[
            "plaintiff",
            "defendant",
            "court",
            "statute",
            "contract",
            "tort",
            "liable",
            "liability",
            "negligence",
            "jurisdiction",
            "constitutional",
            "amendment",
            "prosecution",
            "testimony",
            "evidence",
            "hearsay",
            "appeal",
            "judge",
            "jury",
            "lawsuit",
            "damages",
            "breach",
            "ordinance",
            "felony",
            "misdemeanor",
            "trial",
            "convicted",
            "attorney",
            "legislature",
            "property",
            "deed",
            "tenant",
            "landlord",
        ],
    ),
    (
        Cat::Medicine,
        &[
            "patient",
            "diagnosis",
            "symptoms",
            "treatment",
            "mg",
            "clinical",
            "disease",
            "syndrome",
            "therapy",
            "dose",
            "infection",
            "chronic",
            "acute",
            "physician",
            "blood",
            "cells",
            "protein",
            "gene",
            "genes",
            "virus",
            "bacteria",
            "tumor",
            "cancer",
            "artery",
            "nerve",
            "muscle",
            "enzyme",
            "hormone",
        ],
    ),
    (
        Cat::Science,
        &[
            "velocity",
            "acceleration",
            "energy",
            "force",
            "mass",
            "electron",
            "molecule",
            "atom",
            "atoms",
            "charge",
            "voltage",
            "current",
            "resistance",
            "magnetic",
            "wavelength",
            "frequency",
            "temperature",
            "pressure",
            "reaction",
            "chemical",
            "orbit",
            "gravity",
            "momentum",
            "particle",
            "photon",
            "joules",
            "circuit",
            "capacitor",
            "entropy",
            "thermodynamics",
            "star",
            "planet",
            "galaxy",
        ],
    ),
    (
        Cat::Econ,
        &[
            "price",
            "tax",
            "interest",
            "revenue",
            "gdp",
            "inflation",
            "demand",
            "supply",
            "market",
            "monopoly",
            "elasticity",
            "fiscal",
            "monetary",
            "unemployment",
            "equilibrium",
            "marginal",
            "depreciation",
            "assets",
            "liabilities",
            "equity",
            "dividend",
            "audit",
            "accounting",
            "budget",
            "investment",
        ],
    ),
    (
        Cat::Cs,
        &[
            "algorithm",
            "complexity",
            "binary",
            "compiler",
            "runtime",
            "recursion",
            "recursive",
            "array",
            "hash",
            "pointer",
            "memory",
            "cache",
            "thread",
            "processor",
            "bit",
            "bits",
            "byte",
            "bytes",
            "neural",
            "gradient",
            "network",
            "protocol",
            "encryption",
            "boolean",
            "graph",
            "tree",
            "queue",
            "stack",
            "turing",
            "automaton",
        ],
    ),
];

/// The compiled vocabulary. Built once per [`super::RouterModel`].
#[derive(Debug, Clone)]
pub struct Lexicon {
    ac: AhoCorasick,
    /// Per pattern: its category, and whether its first/last byte is alphanumeric (those edges
    /// need a word boundary).
    meta: Vec<(Cat, bool, bool)>,
}

impl Lexicon {
    /// Compiles [`VOCAB`].
    pub fn new() -> Result<Self, String> {
        let mut patterns: Vec<&str> = Vec::new();
        let mut meta = Vec::new();
        for (cat, words) in VOCAB {
            for w in *words {
                let b = w.as_bytes();
                let first = b.first().is_some_and(|c| is_word_byte(*c));
                let last = b.last().is_some_and(|c| is_word_byte(*c));
                patterns.push(w);
                meta.push((*cat, first, last));
            }
        }
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            // A DFA: one table lookup per byte, the fastest scan for a few hundred patterns.
            .kind(Some(AhoCorasickKind::DFA))
            .build(&patterns)
            .map_err(|e| format!("route vocabulary: {e}"))?;
        Ok(Lexicon { ac, meta })
    }

    /// Adds per-category match counts of `text` to `counts` (indexed like [`DENSE`]).
    fn count(&self, text: &str, counts: &mut [f32; N_DENSE]) {
        let b = text.as_bytes();
        for m in self.ac.find_overlapping_iter(text) {
            let Some(&(cat, first, last)) = self.meta.get(m.pattern().as_usize()) else { continue };
            if first && m.start() > 0 && b.get(m.start() - 1).is_some_and(|c| is_word_byte(*c)) {
                continue;
            }
            if last && b.get(m.end()).is_some_and(|c| is_word_byte(*c)) {
                continue;
            }
            counts[cat.dense_index()] += 1.0;
        }
    }
}

/// Letters, digits, apostrophe-free word bytes; any non-ASCII byte counts as a letter so UTF-8
/// words stay whole.
fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// What [`extract`] returns besides the hashed n-grams it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    /// Raw (unstandardised) dense features, indexed like [`DENSE`].
    pub dense: [f32; N_DENSE],
    /// How many n-gram buckets were reported (with repeats).
    pub ngrams: u32,
}

/// The part of a turn that is scanned: all of it, or its head and tail when longer than
/// [`MAX_TURN_BYTES`]. Cuts fall on char boundaries.
pub fn bounded_turn(text: &str) -> (&str, &str) {
    if text.len() <= MAX_TURN_BYTES {
        return (text, "");
    }
    let head = floor_char_boundary(text, MAX_TURN_BYTES - TAIL_BYTES);
    let tail = ceil_char_boundary(text, text.len() - TAIL_BYTES);
    (&text[..head], &text[tail..])
}

/// The largest char boundary `<= i`.
pub(crate) fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// FNV-1a, fixed so hashes (and the bucket indices stored in the model file) are the same on
/// every platform and Rust version.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Namespace of multiple-choice questions' n-grams.
const MC_NAMESPACE: u64 = 0x6d63_715f_6e73_3031;

/// Bucket of a hash in a table of `2^bits` entries (splitmix64 finaliser spreads FNV's low bits).
fn bucket(h: u64, bits: u32) -> u32 {
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z & ((1u64 << bits) - 1)) as u32
}

/// Running state over the scanned segments.
struct Scan<'f, F: FnMut(u32)> {
    bits: u32,
    /// Mixed into every n-gram hash (see [`MC_NAMESPACE`]).
    namespace: u64,
    on_ngram: &'f mut F,
    ngrams: u32,
    prev: Option<u64>,
    words: u32,
    word_bytes: u32,
    long_words: u32,
    numbers: u32,
    distinct: [u64; MAX_DISTINCT_NUMBERS],
    n_distinct: usize,
}

impl<F: FnMut(u32)> Scan<'_, F> {
    fn emit(&mut self, h: u64) {
        (self.on_ngram)(bucket(h ^ self.namespace, self.bits));
        self.ngrams += 1;
    }

    /// One token: its unigram, and the bigram with the previous token. One-character tokens
    /// ("a", option labels, variable names, single digits) form no n-grams: they carry no topic
    /// and, as bigram halves, split the phrases that do.
    fn token(&mut self, h: u64, len: usize, is_number: bool) {
        if len > 1 {
            self.emit(h);
            if let Some(p) = self.prev {
                self.emit(p.rotate_left(17) ^ h.wrapping_mul(FNV_PRIME));
            }
            self.prev = Some(h);
        }
        if is_number {
            self.numbers += 1;
            if self.n_distinct < MAX_DISTINCT_NUMBERS && !self.distinct[..self.n_distinct].contains(&h) {
                self.distinct[self.n_distinct] = h;
                self.n_distinct += 1;
            }
        } else {
            self.words += 1;
            self.word_bytes += len as u32;
            if len >= 8 {
                self.long_words += 1;
            }
        }
    }

    /// Tokenises one segment: maximal runs of word bytes, ASCII-lowercased.
    fn segment(&mut self, text: &str) {
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if !is_word_byte(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            let mut h = FNV_OFFSET;
            let mut digits = true;
            while i < b.len() && is_word_byte(b[i]) {
                let c = b[i].to_ascii_lowercase();
                digits &= c.is_ascii_digit();
                h = (h ^ u64::from(c)).wrapping_mul(FNV_PRIME);
                i += 1;
            }
            self.token(h, i - start, digits);
        }
        // A bigram never spans two segments.
        self.prev = None;
    }
}

fn log1p(x: f32) -> f32 {
    x.max(0.0).ln_1p()
}

/// Multiple-choice layout: option lines start with `A.`, `A)`, `(A)` or `A:` for letters A–H.
/// Returns the option's text after the label.
fn option_line(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let label = match t.as_bytes() {
        [b'(', l, b')', ..] if (b'A'..=b'H').contains(l) => 3,
        [l, p, ..] if (b'A'..=b'H').contains(l) && matches!(p, b'.' | b')' | b':') => 2,
        _ => return None,
    };
    Some(&t[label..])
}

/// An option that is a quantity: starts with a digit, optionally after `$`, `-`, `−` or `.`.
fn numeric_option(text: &str) -> bool {
    let t = text.trim_start().trim_start_matches(['$', '-', '.', '−', '+', '(']);
    t.as_bytes().first().is_some_and(u8::is_ascii_digit)
}

/// Extracts the features of `turn` (the last user turn, whole: it is bounded here) with
/// `context` (earlier user text, already bounded by the caller to [`MAX_CONTEXT_BYTES`]) and
/// the request facts. Each hashed n-gram bucket (`< 2^hash_bits`) is passed to `on_ngram`.
///
/// Length and structure come from the turn alone, so context cannot make a short follow-up look
/// long; vocabulary and n-grams come from both, because "now make it faster" after a code paste
/// is still about code.
pub fn extract<F: FnMut(u32)>(
    lex: &Lexicon,
    turn: &str,
    context: &str,
    facts: &RequestFacts,
    hash_bits: u32,
    on_ngram: &mut F,
) -> Extracted {
    let mut d = [0f32; N_DENSE];
    let (head, tail) = bounded_turn(turn);
    // Multiple-choice layout: the stem before the first option line, and the options.
    let mut options = 0u32;
    let mut option_bytes = 0usize;
    let mut stem_bytes = 0usize;
    let mut numeric_options = 0u32;
    let mut option_digits = 0usize;
    for line in head.split('\n') {
        if let Some(opt) = option_line(line) {
            options += 1;
            option_bytes += line.len();
            numeric_options += u32::from(numeric_option(opt));
            option_digits += opt.bytes().filter(u8::is_ascii_digit).count();
        } else if options == 0 {
            stem_bytes += line.len() + 1;
        }
    }
    let mc = options >= 2;
    // A multiple-choice question's n-grams hash in their own namespace: what makes such a
    // question hard for the weak model (its subject, its options) is not what makes an open
    // request hard, and shared weights measured worse on both kinds (docs/routing.md).
    let namespace = if mc { MC_NAMESPACE } else { 0 };
    let mut scan = Scan {
        bits: hash_bits.clamp(1, 30),
        namespace,
        on_ngram,
        ngrams: 0,
        prev: None,
        words: 0,
        word_bytes: 0,
        long_words: 0,
        numbers: 0,
        distinct: [0; MAX_DISTINCT_NUMBERS],
        n_distinct: 0,
    };
    for seg in [head, tail] {
        if seg.is_empty() {
            continue;
        }
        scan.segment(seg);
        lex.count(seg, &mut d);
    }
    let (words, word_bytes, long_words, numbers, distinct) =
        (scan.words, scan.word_bytes, scan.long_words, scan.numbers, scan.n_distinct);
    if !context.is_empty() {
        scan.segment(context);
        lex.count(context, &mut d);
    }

    let mut sentences = 0u32;
    let mut lines = 1u32;
    let mut money = 0u32;
    let mut ops = 0u32;
    let mut punct = 0u32;
    let mut questions = 0u32;
    let mut scanned = 0usize;
    for seg in [head, tail] {
        let b = seg.as_bytes();
        scanned += b.len();
        for (i, &c) in b.iter().enumerate() {
            match c {
                b'.' | b'!' | b'?' => {
                    if b.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()) {
                        sentences += 1;
                    }
                    if c == b'?' {
                        questions += 1;
                    }
                }
                b'\n' => lines += 1,
                b'$' | b'%' => money += 1,
                b'+' | b'*' | b'/' | b'=' | b'^' | b'<' | b'>' => ops += 1,
                b'{' | b'}' | b';' | b'(' | b')' | b'[' | b']' => punct += 1,
                _ => {}
            }
        }
    }

    // Vocabulary counts were accumulated raw; squash them.
    for (cat, _) in VOCAB {
        let i = cat.dense_index();
        d[i] = log1p(d[i]);
    }
    d[0] = log1p(turn.len() as f32);
    d[1] = log1p(words as f32);
    d[2] = log1p(sentences as f32);
    d[3] = log1p(lines as f32);
    d[4] = log1p(numbers as f32);
    d[5] = log1p(distinct as f32);
    d[6] = log1p(money as f32);
    d[7] = log1p(ops as f32);
    d[13] = if head.contains("```") || tail.contains("```") { 1.0 } else { 0.0 };
    d[14] = if scanned == 0 { 0.0 } else { 100.0 * punct as f32 / scanned as f32 };
    d[17] = log1p(questions as f32);
    d[18] = if mc { 1.0 } else { 0.0 };
    d[19] = if mc { log1p(option_bytes as f32) } else { 0.0 };
    d[20] = if mc { log1p(stem_bytes as f32) } else { 0.0 };
    d[34] = if mc { log1p(numeric_options as f32) } else { 0.0 };
    d[35] = if mc { log1p(option_digits as f32) } else { 0.0 };
    d[27] = if words == 0 { 0.0 } else { word_bytes as f32 / words as f32 };
    d[28] = if words == 0 { 0.0 } else { long_words as f32 / words as f32 };
    d[29] = log1p(facts.tools as f32);
    d[30] = facts.max_output_tokens.map_or(0.0, |t| log1p(t as f32 / 1000.0));
    d[31] = log1p(context.len() as f32 / 1000.0) + log1p(facts.earlier_turns as f32) * 0.5;
    Extracted { dense: d, ngrams: scan.ngrams }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(text: &str) -> [f32; N_DENSE] {
        let lex = Lexicon::new().expect("vocabulary compiles");
        extract(&lex, text, "", &RequestFacts::default(), 18, &mut |_| {}).dense
    }

    fn ngrams(text: &str) -> Vec<u32> {
        let lex = Lexicon::new().expect("vocabulary compiles");
        let mut v = Vec::new();
        extract(&lex, text, "", &RequestFacts::default(), 20, &mut |b| v.push(b));
        v
    }

    #[test]
    fn one_character_tokens_form_no_ngrams() {
        // "a" and "x" are skipped, so "solve for" and "for equation"'s neighbours stay bigrams.
        assert_eq!(ngrams("solve a for x").len(), 3, "solve, for, solve for");
        assert_eq!(ngrams("solve for"), ngrams("solve a for x"));
        assert_eq!(ngrams("12 apples").len(), 3, "numbers of two digits are tokens");
    }

    #[test]
    fn multiple_choice_ngrams_have_their_own_namespace() {
        let stem = "Which planet is the largest?";
        let mc = format!("{stem}\nA. Mars\nB. Jupiter\nAnswer:");
        let open = format!("{stem}\nMars or Jupiter\nAnswer:");
        let (a, b) = (ngrams(&mc), ngrams(&open));
        assert!(!a.is_empty() && !b.is_empty());
        assert!(a.iter().all(|x| !b.contains(x)), "no shared buckets between the namespaces");
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = DENSE.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), N_DENSE);
    }

    #[test]
    fn word_boundaries_not_substrings() {
        // "Hamlet" contains `let`, "important" contains `import`, "classic" contains `class`.
        let d = dense("Discuss the important themes of Hamlet, a classic play.");
        assert_eq!(d[12], 0.0, "no code markers");
        let d = dense("import os\nlet x = 1;");
        assert!(d[12] > 0.0);
    }

    #[test]
    fn multiword_phrases_match() {
        assert!(dense("Think step by step.")[10] > 0.0);
        assert!(dense("Use at least three sources.")[11] > 0.0);
        assert_eq!(dense("the atleast")[11], 0.0);
    }

    #[test]
    fn quantities_and_multiple_choice() {
        let d = dense("Tom has 3 apples and buys 4 more at $2 each. He had 3 before.");
        assert_eq!(d[4], log1p(4.0));
        assert_eq!(d[5], log1p(3.0));
        let d = dense("What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:");
        assert_eq!(d[18], 1.0);
        assert_eq!(dense("A plain sentence.")[18], 0.0);
    }

    #[test]
    fn numeric_options() {
        let d = dense("How many?\nA. 12\nB. $3.50\nC. -4\nD. none\nAnswer:");
        // Within rounding: the feature's log may be computed in a different order when optimised.
        assert!((d[34] - log1p(3.0)).abs() < 1e-6 && (d[35] - log1p(6.0)).abs() < 1e-6, "{d:?}");
        assert_eq!(dense("Tom has 3 apples.")[34], 0.0);
    }

    #[test]
    fn subject_features_are_the_posterior_weighted_rate() {
        let mut d = [0f32; N_DENSE];
        subject_features(&[], &[], &mut d);
        assert_eq!((d[SUBJECT_RATE], d[SUBJECT_CONF]), (0.0, 0.0));
        // Equal scores: the mean rate, confidence 1/n.
        subject_features(&[1.0, 1.0], &[0.1, 0.3], &mut d);
        assert!((d[SUBJECT_RATE] - (0.2f32 / 0.8).ln()).abs() < 1e-5);
        assert!((d[SUBJECT_CONF] - 0.5).abs() < 1e-6);
        // A confident recognition takes that subject's rate.
        subject_features(&[20.0, 0.0], &[0.1, 0.3], &mut d);
        assert!((d[SUBJECT_RATE] - (0.1f32 / 0.9).ln()).abs() < 1e-3 && d[SUBJECT_CONF] > 0.99);
    }

    #[test]
    fn long_turn_is_bounded_on_char_boundaries() {
        let text = "é".repeat(40_000);
        let (head, tail) = bounded_turn(&text);
        assert!(head.len() + tail.len() <= MAX_TURN_BYTES);
        assert!(!tail.is_empty());
        let lex = Lexicon::new().expect("vocabulary compiles");
        let mut n = 0;
        let e = extract(&lex, &text, "", &RequestFacts::default(), 10, &mut |b| {
            assert!(b < 1024);
            n += 1;
        });
        assert_eq!(e.ngrams, n);
    }
}
