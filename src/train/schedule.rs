//! Learning-rate schedule, a pure function of the iteration so a resumed run continues exactly.

/// Linear warm-up over `warmup` iterations to `peak`, then cosine to `min_lr` at `total`.
pub fn warmup_cosine(step: usize, warmup: usize, total: usize, peak: f64, min_lr: f64) -> f64 {
    if step < warmup {
        // (t+1)/W, so the very first step already moves the weights
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    min_lr + (peak - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// DINO's `utils.cosine_scheduler` at iteration `it` of `total` (`epochs · niter_per_ep`):
/// `np.linspace(start_warmup, base, warmup)` for the first `warmup` iterations, then
/// `final + ½(base − final)(1 + cos(π·i/(total − warmup)))`. Unlike [`warmup_cosine`] the warm-up
/// starts at `start_warmup` and the cosine never quite reaches `final`.
pub fn cosine_scheduler(
    base: f64,
    final_value: f64,
    total: usize,
    warmup: usize,
    start_warmup: f64,
    it: usize,
) -> f64 {
    let warmup = warmup.min(total);
    if it < warmup {
        if warmup == 1 {
            return start_warmup;
        }
        return start_warmup + (base - start_warmup) * it as f64 / (warmup - 1) as f64;
    }
    let span = (total - warmup).max(1);
    let i = (it - warmup).min(span) as f64;
    final_value
        + 0.5 * (base - final_value) * (1.0 + (std::f64::consts::PI * i / span as f64).cos())
}
