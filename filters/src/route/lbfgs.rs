//! Limited-memory BFGS for the router fit: a smooth convex objective over some 10^5 weights,
//! minimised to convergence so that a refit on the same data gives the same file and every
//! weight is regularised alike (SGD only shrinks a weight when its n-gram occurs, which lets rare
//! n-grams memorise their prompts).

/// Minimises `f` from `x`. `f(x, grad)` returns the objective and writes its gradient. Stops
/// after `max_iter` iterations, or when an iteration improves the objective by less than
/// `tol` relative to its magnitude. Returns the number of iterations run.
pub fn minimize<F: FnMut(&[f64], &mut [f64]) -> f64>(mut f: F, x: &mut [f64], max_iter: usize, tol: f64) -> usize {
    const MEMORY: usize = 10;
    let n = x.len();
    let mut g = vec![0.0; n];
    let mut fx = f(x, &mut g);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut rho: Vec<f64> = Vec::new();
    let mut d = vec![0.0; n];
    let mut x_new = vec![0.0; n];
    let mut g_new = vec![0.0; n];
    let mut alpha = [0.0; MEMORY];
    for iter in 0..max_iter {
        // Two-loop recursion: d = -H g.
        d.copy_from_slice(&g);
        for k in (0..s_hist.len()).rev() {
            alpha[k] = rho[k] * dot(&s_hist[k], &d);
            axpy(-alpha[k], &y_hist[k], &mut d);
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(y)) => dot(s, y) / dot(y, y).max(f64::MIN_POSITIVE),
            // First step: a unit-length step along the gradient.
            _ => 1.0 / norm(&g).max(1e-12),
        };
        d.iter_mut().for_each(|v| *v *= gamma);
        for k in 0..s_hist.len() {
            let beta = rho[k] * dot(&y_hist[k], &d);
            axpy(alpha[k] - beta, &s_hist[k], &mut d);
        }
        d.iter_mut().for_each(|v| *v = -*v);
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction (curvature information went stale): restart.
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            d.iter_mut().zip(&g).for_each(|(v, gi)| *v = -gi);
            slope = -dot(&g, &g);
        }
        // Backtracking line search (Armijo).
        let mut step = 1.0;
        let mut f_new;
        loop {
            x_new.iter_mut().zip(x.iter().zip(&d)).for_each(|(xn, (xi, di))| *xn = xi + step * di);
            f_new = f(&x_new, &mut g_new);
            if f_new <= fx + 1e-4 * step * slope {
                break;
            }
            step *= 0.5;
            if step < 1e-10 {
                // No decrease along a descent direction: at the optimum to rounding.
                return iter;
            }
        }
        let s: Vec<f64> = x_new.iter().zip(x.iter()).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if s_hist.len() == MEMORY {
                s_hist.remove(0);
                y_hist.remove(0);
                rho.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
            rho.push(1.0 / sy);
        }
        x.copy_from_slice(&x_new);
        g.copy_from_slice(&g_new);
        let improved = fx - f_new;
        fx = f_new;
        if improved.abs() <= tol * fx.abs().max(1.0) {
            return iter + 1;
        }
    }
    max_iter
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    y.iter_mut().zip(x).for_each(|(yi, xi)| *yi += a * xi);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimises_an_ill_conditioned_quadratic() {
        // f = Σ c_i (x_i - i)^2 with curvatures spanning two orders of magnitude.
        let c: Vec<f64> = (0..50).map(|i| 10f64.powf(i as f64 / 25.0)).collect();
        let mut x = vec![0.0; 50];
        let iters = minimize(
            |x, g| {
                let mut f = 0.0;
                for i in 0..x.len() {
                    let r = x[i] - i as f64;
                    f += c[i] * r * r;
                    g[i] = 2.0 * c[i] * r;
                }
                f
            },
            &mut x,
            500,
            1e-12,
        );
        assert!(iters < 500, "{iters} iterations");
        for (i, v) in x.iter().enumerate() {
            assert!((v - i as f64).abs() < 1e-3, "x[{i}] = {v}");
        }
    }

    #[test]
    fn minimises_rosenbrock() {
        let mut x = vec![-1.2, 1.0];
        minimize(
            |x, g| {
                let (a, b) = (x[0], x[1]);
                g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
                g[1] = 200.0 * (b - a * a);
                (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
            },
            &mut x,
            1000,
            1e-16,
        );
        assert!((x[0] - 1.0).abs() < 1e-4 && (x[1] - 1.0).abs() < 1e-4, "{x:?}");
    }
}
