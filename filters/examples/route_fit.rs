//! Fits the `auto` router model on labelled prompts and writes the model file.
//!
//! ```text
//! cargo run -p filters --release --example route_fit -- TRAIN.jsonl OUT.json [--bits 20] [--iters 500]
//!     [--l2-dense 1e-4] [--l2-hashed 1e-4] [--balance false] [--smooth 0.5] [--min-df 2] [--prune 0.02] [--seed 1]
//! ```
//!
//! TRAIN.jsonl holds `{"id","source","prompt","weak_correct","strong_correct","needs_strong"}` lines
//! (see docs/routing.md to build one from your own traffic).

use filters::route::fit::{fit, parse_examples, FitParams};
use filters::route::{ModelFile, SubjectFile};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("route_fit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut params = FitParams::default();
    let rest = params.parse_args(&args)?;
    let [train, out] = rest.as_slice() else {
        return Err("usage: route_fit TRAIN.jsonl OUT.json [flags]".into());
    };
    let text = std::fs::read_to_string(train).map_err(|e| format!("{train}: {e}"))?;
    let examples = parse_examples(&text)?;
    let provenance = serde_json::json!({
        "by": "filters/examples/route_fit.rs",
        "data": train,
        "rows": examples.len(),
        "target": "needs_strong",
        "params": format!("{params:?}"),
    });
    let file = fit(&examples, &params, provenance)?;
    std::fs::write(out, render(&file)?).map_err(|e| format!("{out}: {e}"))?;
    eprintln!(
        "route_fit: {} rows -> {out}: {} vocabulary buckets, {} subject weights, thresholds {}/{}/{}",
        examples.len(),
        file.hashed.len(),
        file.subjects.weights.len(),
        file.tiers.medium,
        file.tiers.complex,
        file.tiers.reasoning
    );
    Ok(())
}

/// Pretty JSON for the readable parts, one compact line for each long array.
fn render(file: &ModelFile) -> Result<String, String> {
    fn line<T: serde::Serialize>(v: &T) -> Result<String, String> {
        serde_json::to_string(v).map_err(|e| e.to_string())
    }
    let s = &file.subjects;
    let head = ModelFile { hashed: Vec::new(), subjects: SubjectFile::default(), ..file.clone() };
    let mut out = serde_json::to_string_pretty(&head).map_err(|e| e.to_string())?;
    for (key, value) in [
        ("hashed", line(&file.hashed)?),
        ("names", line(&s.names)?),
        ("rates", line(&s.rates)?),
        ("bias", line(&s.bias)?),
        ("weights", line(&s.weights)?),
    ] {
        out = out.replacen(&format!("\"{key}\": []"), &format!("\"{key}\": {value}"), 1);
    }
    Ok(out + "\n")
}
