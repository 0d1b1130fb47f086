//! White-box measures: how far each layer has moved the tokens along the objective it was derived
//! from (`../shared/docs/crate-reference.md` §5).
//!
//! - `R(Z) = ½ logdet(I + d/(Nε²) ZᵀZ)` — coding rate of the N tokens (paper);
//! - `R^c(Z; U) = Σ_k ½ logdet(I + p/(Nε²) (ZU_k)ᵀ(ZU_k))` — compression against the layer's
//!   subspaces `U_k` (rows of `qkv.weight`) (paper);
//! - the official repository's variant: per-head unit-normalised `q = LN₁(Z) U` with `eps` entering
//!   un-squared (`vis_utils/coding_rate.py`), batch mean and unbiased std;
//! - sparsity of the ISTA output: L0 count and fraction of zeros per sample.
//!
//! Cost: each log-determinant is a Cholesky factorisation in f64 of the smaller Gram matrix
//! (Sylvester: `logdet(I_N + c ZZᵀ) = logdet(I_m + c ZᵀZ)`), so one measure costs
//! O(N·m² + m³) with m = min(N, width): linear in the number of tokens once N exceeds the width.

use anyhow::{ensure, Result};
use burn::tensor::Tensor;
use std::collections::BTreeMap;

use crate::model::fused::{layer_norm, AttnMask};
use crate::model::{Activations, Crate, CrateBackend};

/// `½ logdet(I + c·ZᵀZ)` for `z` `[n, m]` row-major, through the smaller Gram matrix.
pub fn half_logdet_gram(z: &[f64], n: usize, m: usize, c: f64) -> f64 {
    let (k, gram): (usize, Vec<f64>) = if m <= n {
        let mut g = vec![0f64; m * m];
        for row in z.chunks_exact(m) {
            for i in 0..m {
                let ri = row[i];
                for j in 0..=i {
                    g[i * m + j] += ri * row[j];
                }
            }
        }
        (m, g)
    } else {
        let mut g = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                g[i * n + j] = z[i * m..(i + 1) * m]
                    .iter()
                    .zip(&z[j * m..(j + 1) * m])
                    .map(|(a, b)| a * b)
                    .sum();
            }
        }
        (n, g)
    };
    // A = I + c·G (lower triangle), Cholesky in place: A = L Lᵀ, logdet A = 2 Σ log L_ii.
    let mut a: Vec<f64> = gram.iter().map(|v| c * v).collect();
    for i in 0..k {
        a[i * k + i] += 1.0;
    }
    let mut half_logdet = 0.0;
    for j in 0..k {
        let mut d = a[j * k + j];
        for p in 0..j {
            d -= a[j * k + p] * a[j * k + p];
        }
        let l = d.max(f64::MIN_POSITIVE).sqrt();
        a[j * k + j] = l;
        half_logdet += l.ln();
        for i in j + 1..k {
            let mut s = a[i * k + j];
            for p in 0..j {
                s -= a[i * k + p] * a[j * k + p];
            }
            a[i * k + j] = s / l;
        }
    }
    half_logdet
}

/// Paper coding rate `R(Z) = ½ logdet(I + d/(Nε²) ZᵀZ)` of tokens `z` `[n, d]`.
pub fn coding_rate(z: &[f64], n: usize, d: usize, eps_sq: f64) -> f64 {
    half_logdet_gram(z, n, d, d as f64 / (n as f64 * eps_sq))
}

/// `Z U_k` for head `k`: `qkv` is the official `[K·p, d]` weight whose rows `k·p..(k+1)·p` are `U_kᵀ`.
fn project_head(z: &[f64], n: usize, d: usize, qkv: &[f64], k: usize, p: usize) -> Vec<f64> {
    let mut out = vec![0f64; n * p];
    for t in 0..n {
        let zt = &z[t * d..(t + 1) * d];
        for j in 0..p {
            let u = &qkv[(k * p + j) * d..(k * p + j + 1) * d];
            out[t * p + j] = zt.iter().zip(u).map(|(a, b)| a * b).sum();
        }
    }
    out
}

/// Paper compression term `R^c(Z; U) = Σ_k ½ logdet(I + p/(Nε²) (ZU_k)ᵀ(ZU_k))`.
pub fn compression(z: &[f64], n: usize, d: usize, qkv: &[f64], heads: usize, eps_sq: f64) -> f64 {
    let p = qkv.len() / d / heads;
    (0..heads)
        .map(|k| {
            half_logdet_gram(
                &project_head(z, n, d, qkv, k, p),
                n,
                p,
                p as f64 / (n as f64 * eps_sq),
            )
        })
        .sum()
}

/// The official repository's measure on `q` `[n, K·p]` (= `LN₁(Z) U` of one sample): each token's
/// per-head vector scaled to unit length, then `Σ_k ½ logdet(I + p/(N·eps) Q̂_kᵀQ̂_k)`, eps un-squared.
pub fn official_rc(q: &[f64], n: usize, heads: usize, p: usize, eps: f64) -> f64 {
    (0..heads)
        .map(|k| {
            let mut qk = vec![0f64; n * p];
            for t in 0..n {
                let row = &q[t * heads * p + k * p..t * heads * p + (k + 1) * p];
                let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                for j in 0..p {
                    qk[t * p + j] = row[j] / norm;
                }
            }
            half_logdet_gram(&qk, n, p, p as f64 / (n as f64 * eps))
        })
        .sum()
}

/// Number of nonzero entries.
pub fn l0(z: &[f32]) -> usize {
    z.iter().filter(|v| **v != 0.0).count()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Standard deviation, unbiased (`torch.std`) or population (`numpy.std`).
fn std(v: &[f64], unbiased: bool) -> f64 {
    let m = mean(v);
    let denom = if unbiased {
        v.len().saturating_sub(1).max(1)
    } else {
        v.len()
    } as f64;
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / denom).sqrt()
}

/// Settings of the measures (defaults as in the golden measures file).
#[derive(Debug, Clone, Copy)]
pub struct MeasureSettings {
    /// ε² of the paper formulas.
    pub eps_sq: f64,
    /// `eps` of the official `CodingRate` (enters un-squared).
    pub official_eps: f64,
}

impl Default for MeasureSettings {
    fn default() -> Self {
        Self {
            eps_sq: 0.01,
            official_eps: 0.01,
        }
    }
}

fn per_sample(values: Vec<f32>, b: usize) -> Vec<Vec<f64>> {
    let per = values.len() / b;
    values
        .chunks_exact(per)
        .map(|c| c.iter().map(|v| *v as f64).collect())
        .collect()
}

/// Every measure of a batch `x`, as a flat map under the golden JSON's key names.
pub fn measure_batch<B: CrateBackend>(
    model: &Crate<B>,
    x: Tensor<B, 4>,
    s: MeasureSettings,
) -> Result<BTreeMap<String, f64>> {
    let b = x.dims()[0];
    ensure!(b > 0, "cannot measure an empty batch");
    let mut acts = Activations::on();
    let z0 = model.embed(x.clone(), &mut Activations::off());
    let _ = model.forward_with(x, &mut acts);
    let acts: BTreeMap<String, crate::model::Captured> = acts
        .into_vec()
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect();
    let [_, n, d] = z0.dims();
    let mut out = BTreeMap::new();
    let mut put = |k: String, v: f64| {
        out.insert(k, v);
    };
    let heads = model.layers[0].mssa.heads;
    let p = model.layers[0].mssa.dim_head;
    let qkv_of = |i: usize| -> Vec<f64> {
        // official [K·p, d] layout = burn Linear weight [d, K·p] transposed
        let w: Vec<f32> = model.layers[i]
            .mssa
            .qkv
            .weight
            .val()
            .transpose()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        w.into_iter().map(|v| v as f64).collect()
    };
    let paper = |name: &str, z: &[Vec<f64>], qkv: &[f64], put: &mut dyn FnMut(String, f64)| {
        let (mut rs, mut rcs) = (Vec::new(), Vec::new());
        for (bi, zb) in z.iter().enumerate() {
            let r = coding_rate(zb, n, d, s.eps_sq);
            let rc = compression(zb, n, d, qkv, heads, s.eps_sq);
            put(format!("paper.{name}.R.sample{bi}"), r);
            put(format!("paper.{name}.Rc.sample{bi}"), rc);
            rs.push(r);
            rcs.push(rc);
        }
        put(format!("paper.{name}.R.batch_mean"), mean(&rs));
        put(format!("paper.{name}.Rc.batch_mean"), mean(&rcs));
    };
    let embed = per_sample(acts["act.embed"].values.clone(), b);
    paper("embed", &embed, &qkv_of(0), &mut put);
    let mut z_in = z0.reshape([b * n, d]);
    for (i, layer) in model.layers.iter().enumerate() {
        let qkv = qkv_of(i);
        // official: CodingRate on qkv(LN₁(Z_in)), Z_in = input of layer i
        let q = layer
            .mssa
            .qkv
            .forward(layer_norm(&layer.norm1, z_in.clone(), layer.ln_eps));
        let q = per_sample(q.into_data().convert::<f32>().to_vec().unwrap(), b);
        let rc: Vec<f64> = q
            .iter()
            .map(|qb| official_rc(qb, n, heads, p, s.official_eps))
            .collect();
        put(
            format!("official.layer{i}.Rc_qkv_normalized.batch_mean"),
            mean(&rc),
        );
        put(
            format!("official.layer{i}.Rc_qkv_normalized.batch_std"),
            std(&rc, true),
        );
        let attn = per_sample(acts[&format!("act.layer{i}.attn")].values.clone(), b);
        paper(&format!("layer{i}.attn"), &attn, &qkv, &mut put);
        let ista_f32 = &acts[&format!("act.layer{i}.ista")].values;
        let ista = per_sample(ista_f32.clone(), b);
        paper(&format!("layer{i}.ista"), &ista, &qkv, &mut put);
        let per = n * d;
        let zeros: Vec<f64> = ista_f32
            .chunks_exact(per)
            .enumerate()
            .map(|(bi, c)| {
                let nz = l0(c);
                put(format!("paper.layer{i}.ista.L0.sample{bi}"), nz as f64);
                let fz = 1.0 - nz as f64 / per as f64;
                put(format!("paper.layer{i}.ista.fraction_zero.sample{bi}"), fz);
                fz
            })
            .collect();
        put(
            format!("paper.layer{i}.ista.fraction_zero.batch_mean"),
            mean(&zeros),
        );
        put(
            format!("official.layer{i}.ista_fraction_zero.batch_mean"),
            mean(&zeros),
        );
        put(
            format!("official.layer{i}.ista_fraction_zero.batch_std_population"),
            std(&zeros, false),
        );
        z_in = layer.forward(z_in, b, n, &AttnMask::None);
    }
    Ok(out)
}

/// The two per-layer curves the official plots draw, as mean ± std over the samples:
/// the official `R^c` of each layer's input (`Z^l`, `l = 0..L−1`) and the sparsity
/// `‖Z^{l+1}‖₀/(N·d)` of each layer's ISTA output (`1 −` the official `cal_sparsity` value).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerCurves {
    pub rc_mean: Vec<f64>,
    pub rc_std: Vec<f64>,
    pub sparsity_mean: Vec<f64>,
    pub sparsity_std: Vec<f64>,
}

impl LayerCurves {
    /// Read the curves of a `depth`-layer model out of a `measure_batch` map.
    pub fn from_measures(m: &BTreeMap<String, f64>, depth: usize) -> Result<Self> {
        let get = |k: String| -> Result<f64> {
            m.get(&k)
                .copied()
                .ok_or_else(|| anyhow::anyhow!("measure {k} missing"))
        };
        let mut c = LayerCurves {
            rc_mean: vec![],
            rc_std: vec![],
            sparsity_mean: vec![],
            sparsity_std: vec![],
        };
        for i in 0..depth {
            c.rc_mean.push(get(format!(
                "official.layer{i}.Rc_qkv_normalized.batch_mean"
            ))?);
            c.rc_std.push(get(format!(
                "official.layer{i}.Rc_qkv_normalized.batch_std"
            ))?);
            c.sparsity_mean
                .push(1.0 - get(format!("official.layer{i}.ista_fraction_zero.batch_mean"))?);
            c.sparsity_std.push(get(format!(
                "official.layer{i}.ista_fraction_zero.batch_std_population"
            ))?);
        }
        Ok(c)
    }

    pub fn depth(&self) -> usize {
        self.rc_mean.len()
    }
}

/// The per-layer measures of [`measure_batch`] as a text table: the official R^c (mean ± std),
/// the paper's R and R^c after MSSA (`Z½`) and after ISTA (`Z'`), and ISTA's zeros.
pub fn table(m: &BTreeMap<String, f64>, depth: usize) -> String {
    let g = |k: String| m.get(&k).copied().unwrap_or(f64::NAN);
    let mut out = format!(
        "{:<8} {:>14} {:>12} {:>12} {:>12} {:>12} {:>10}\n",
        "layer", "official R^c", "R(Z½)", "R^c(Z½)", "R(Z')", "R^c(Z')", "zeros"
    );
    out += &format!(
        "{:<8} {:>14} {:>12} {:>12} {:>12.3} {:>12.3} {:>10}\n",
        "embed",
        "",
        "",
        "",
        g("paper.embed.R.batch_mean".into()),
        g("paper.embed.Rc.batch_mean".into()),
        ""
    );
    for i in 0..depth {
        out += &format!(
            "{:<8} {:>8.3}±{:<5.3} {:>12.3} {:>12.3} {:>12.3} {:>12.3} {:>9.1}%\n",
            i,
            g(format!("official.layer{i}.Rc_qkv_normalized.batch_mean")),
            g(format!("official.layer{i}.Rc_qkv_normalized.batch_std")),
            g(format!("paper.layer{i}.attn.R.batch_mean")),
            g(format!("paper.layer{i}.attn.Rc.batch_mean")),
            g(format!("paper.layer{i}.ista.R.batch_mean")),
            g(format!("paper.layer{i}.ista.Rc.batch_mean")),
            100.0 * g(format!("paper.layer{i}.ista.fraction_zero.batch_mean")),
        );
    }
    out
}
