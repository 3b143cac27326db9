//! Evaluates the `auto` router the way RouteLLM does, per source, with k-fold cross-validation
//! so no prompt is scored by a model fitted on it; random and prompt-length baselines are
//! computed in the same run.
//!
//! ```text
//! cargo run -p filters --release --example route_eval -- TRAIN.jsonl [--folds 5] [--seeds 7,8,9]
//!     [--model FILE] [fit flags as for route_fit]
//! ```
//!
//! `--seeds` repeats the cross-validation with differently drawn folds and reports the mean and
//! the spread (min–max) over them. The "subject rate" row is a reference, not a router: it
//! scores each prompt by its *labelled* subject's `needs_strong` rate on the fold's training part
//! (serving has no subject labels).
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
    let seeds: Vec<u64> = take_flag(&mut args, "--seeds")
        .unwrap_or_else(|| "7".into())
        .split(',')
        .map(|v| v.trim().parse().map_err(|e| format!("--seeds: {e}")))
        .collect::<Result<_, _>>()?;
    let model_path = take_flag(&mut args, "--model");
    let mut params = FitParams::default();
    let rest = params.parse_args(&args)?;
    let [train] = rest.as_slice() else {
        return Err("usage: route_eval TRAIN.jsonl [--folds K] [--seeds S,S,..] [--model FILE] [fit flags]".into());
    };
    let text = std::fs::read_to_string(train).map_err(|e| format!("{train}: {e}"))?;
    let examples = parse_examples(&text)?;

    // Out-of-fold scores per seed: each prompt scored by the model fitted on the other k-1 folds.
    let mut cv_runs: Vec<Vec<f32>> = Vec::new();
    let mut oracle_runs: Vec<Vec<f32>> = Vec::new();
    let mut recog_runs: Vec<Vec<f32>> = Vec::new();
    for &seed in &seeds {
        let fold = folds(&examples, k, seed);
        let mut cv = vec![0f32; examples.len()];
        let mut oracle = vec![0f32; examples.len()];
        let mut recog = vec![0f32; examples.len()];
        for f in 0..k {
            let train_set: Vec<Example> =
                examples.iter().zip(&fold).filter(|(_, g)| **g != f).map(|(e, _)| e.clone()).collect();
            let file = fit(&train_set, &params, serde_json::Value::Null)?;
            let model = RouterModel::from_file(&file)?;
            // The recogniser alone: every weight zero but `subject_rate`'s.
            let mut alone = file.clone();
            alone.hashed.iter_mut().for_each(|h| h.1 = 0.0);
            for p in &mut alone.features {
                p.weight = if p.name == "subject_rate" { 1.0 } else { 0.0 };
            }
            let alone = RouterModel::from_file(&alone)?;
            for (i, e) in examples.iter().enumerate().filter(|(i, _)| fold[*i] == f) {
                cv[i] = model.classify_text(&e.prompt).score;
                recog[i] = alone.classify_text(&e.prompt).score;
                let same: Vec<&Example> =
                    train_set.iter().filter(|t| t.source == e.source && t.subject == e.subject).collect();
                let pos = same.iter().filter(|t| t.needs_strong).count() as f32;
                // Ties broken by length, so the reference is not penalised for whole-subject ties.
                oracle[i] = (pos + 1.0) / (same.len() as f32 + 5.0) + e.prompt.len() as f32 * 1e-9;
            }
        }
        cv_runs.push(cv);
        oracle_runs.push(oracle);
        recog_runs.push(recog);
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
    println!(
        "{k}-fold cross-validated on {train} ({} prompts), fold seeds {seeds:?}; params {params:?}\n",
        examples.len()
    );
    println!("| source | n | router | APGR | AUROC | CPT(50%) | CPT(80%) |");
    println!("|---|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for src in sources {
        let idx: Vec<usize> = (0..examples.len()).filter(|i| examples[*i].source == src).collect();
        let sub: Vec<&Example> = idx.iter().map(|i| &examples[*i]).collect();
        let pick = |s: &[f32]| idx.iter().map(|i| s[*i]).collect::<Vec<f32>>();
        let row = |name: &str, m: RouteMetrics, spread: &str| {
            println!(
                "| {src} | {} | {name} | {:.3}{spread} | {:.3} | {:.1}% | {:.1}% |",
                m.n,
                m.apgr,
                m.auroc,
                m.cpt50 * 100.0,
                m.cpt80 * 100.0
            );
        };
        let mean = |ms: &[RouteMetrics]| {
            let r = ms.len() as f64;
            RouteMetrics {
                n: ms[0].n,
                apgr: ms.iter().map(|m| m.apgr).sum::<f64>() / r,
                auroc: ms.iter().map(|m| m.auroc).sum::<f64>() / r,
                cpt50: ms.iter().map(|m| m.cpt50).sum::<f64>() / r,
                cpt80: ms.iter().map(|m| m.cpt80).sum::<f64>() / r,
            }
        };
        let spread = |ms: &[RouteMetrics]| {
            if ms.len() < 2 {
                return String::new();
            }
            let lo = ms.iter().map(|m| m.apgr).fold(f64::INFINITY, f64::min);
            let hi = ms.iter().map(|m| m.apgr).fold(f64::NEG_INFINITY, f64::max);
            format!(" ({lo:.3}–{hi:.3})")
        };
        let cv: Vec<RouteMetrics> = cv_runs.iter().map(|s| route_metrics(&pick(s), &sub)).collect();
        let label = if seeds.len() > 1 {
            format!("portcullis ({k}-fold CV, {} seeds)", seeds.len())
        } else {
            format!("portcullis ({k}-fold CV)")
        };
        row(&label, mean(&cv), &spread(&cv));
        summary.push(format!(
            "{src} {:.4} [{}]",
            mean(&cv).apgr,
            cv.iter().map(|m| format!("{:.3}", m.apgr)).collect::<Vec<_>>().join(" ")
        ));
        row("prompt length", route_metrics(&pick(&length), &sub), "");
        let runs = 50;
        let rnd: Vec<RouteMetrics> =
            (1..=runs).map(|seed| route_metrics(&random_scores(sub.len(), seed), &sub)).collect();
        row(&format!("random (mean of {runs})"), mean(&rnd), "");
        let or: Vec<RouteMetrics> = oracle_runs.iter().map(|s| route_metrics(&pick(s), &sub)).collect();
        row("labelled-subject rate (reference)", mean(&or), &spread(&or));
        let rc: Vec<RouteMetrics> = recog_runs.iter().map(|s| route_metrics(&pick(s), &sub)).collect();
        row("recognised-subject rate alone (CV)", mean(&rc), &spread(&rc));
        if let Some(s) = &shipped {
            row("model file (in-sample)", route_metrics(&pick(s), &sub), "");
        }
    }
    eprintln!("APGR {}", summary.join(" | "));
    Ok(())
}
