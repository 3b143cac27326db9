//! Evaluates the `auto` router the way RouteLLM does, per source, with k-fold cross-validation
//! so no prompt is scored by a model fitted on it; random and prompt-length baselines are
//! computed in the same run.
//!
//! ```text
//! cargo run -p filters --release --example route_eval -- TRAIN.jsonl [--folds 5] [--model FILE]
//!     [fit flags as for route_fit]
//! ```
//!
//! `--model FILE` also scores an existing model file on the same data (in-sample if it was
//! fitted on it: an upper bound, not an estimate).

use filters::route::fit::{fit, folds, parse_examples, random_scores, route_metrics, Example, FitParams, RouteMetrics};
use filters::route::RouterModel;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("route_eval: {e}");
            ExitCode::FAILURE
        }
    }
}

fn take_flag(args: &mut Vec<String>, name: &str) -> Option<String> {
    let i = args.iter().position(|a| a == name)?;
    if i + 1 >= args.len() {
        return None;
    }
    let v = args.remove(i + 1);
    args.remove(i);
    Some(v)
}

fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let k: usize = take_flag(&mut args, "--folds").map_or(Ok(5), |v| v.parse()).map_err(|e| format!("--folds: {e}"))?;
    let model_path = take_flag(&mut args, "--model");
    let mut params = FitParams::default();
    let rest = params.parse_args(&args)?;
    let [train] = rest.as_slice() else {
        return Err("usage: route_eval TRAIN.jsonl [--folds K] [--model FILE] [fit flags]".into());
    };
    let text = std::fs::read_to_string(train).map_err(|e| format!("{train}: {e}"))?;
    let examples = parse_examples(&text)?;

    // Out-of-fold scores: each prompt scored by the model fitted on the other k-1 folds.
    let fold = folds(&examples, k, 7);
    let mut cv = vec![0f32; examples.len()];
    for f in 0..k {
        let train_set: Vec<Example> =
            examples.iter().zip(&fold).filter(|(_, g)| **g != f).map(|(e, _)| e.clone()).collect();
        let file = fit(&train_set, &params, serde_json::Value::Null)?;
        let model = RouterModel::from_file(&file)?;
        for (i, e) in examples.iter().enumerate().filter(|(i, _)| fold[*i] == f) {
            cv[i] = model.classify_text(&e.prompt).score;
        }
    }
    let length: Vec<f32> = examples.iter().map(|e| e.prompt.len() as f32).collect();
    let shipped = match &model_path {
        Some(p) => {
            let json = std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?;
            let m = RouterModel::from_json(&json)?;
            Some(examples.iter().map(|e| m.classify_text(&e.prompt).score).collect::<Vec<f32>>())
        }
        None => None,
    };

    let mut sources: Vec<&str> = examples.iter().map(|e| e.source.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    println!("{k}-fold cross-validated on {train} ({} prompts); params {params:?}\n", examples.len());
    println!("| source | n | router | APGR | AUROC | CPT(50%) | CPT(80%) |");
    println!("|---|---|---|---|---|---|---|");
    for src in sources {
        let idx: Vec<usize> = (0..examples.len()).filter(|i| examples[*i].source == src).collect();
        let sub: Vec<&Example> = idx.iter().map(|i| &examples[*i]).collect();
        let pick = |s: &[f32]| idx.iter().map(|i| s[*i]).collect::<Vec<f32>>();
        let row = |name: &str, m: RouteMetrics| {
            println!(
                "| {src} | {} | {name} | {:.3} | {:.3} | {:.1}% | {:.1}% |",
                m.n,
                m.apgr,
                m.auroc,
                m.cpt50 * 100.0,
                m.cpt80 * 100.0
            );
        };
        row(&format!("portcullis ({k}-fold CV)"), route_metrics(&pick(&cv), &sub));
        row("prompt length", route_metrics(&pick(&length), &sub));
        let runs = 50;
        let mut acc = RouteMetrics { n: sub.len(), apgr: 0.0, auroc: 0.0, cpt50: 0.0, cpt80: 0.0 };
        for seed in 1..=runs {
            let m = route_metrics(&random_scores(sub.len(), seed), &sub);
            acc.apgr += m.apgr / runs as f64;
            acc.auroc += m.auroc / runs as f64;
            acc.cpt50 += m.cpt50 / runs as f64;
            acc.cpt80 += m.cpt80 / runs as f64;
        }
        row(&format!("random (mean of {runs})"), acc);
        if let Some(s) = &shipped {
            row("model file (in-sample)", route_metrics(&pick(s), &sub));
        }
    }
    Ok(())
}
