//! The hand-written CPU kernels against plain loops: the strided GEMM for every transpose and
//! split, the softmax's `exp`, and the row reductions.

use whitebox::model::gemm::{matmul, matmul_into, MatRef};
use whitebox::model::kernels::{dot, exp, max, sum};

fn naive(a: MatRef, b: MatRef) -> Vec<f32> {
    let mut c = vec![0f32; a.rows * b.cols];
    for i in 0..a.rows {
        for j in 0..b.cols {
            c[i * b.cols + j] = (0..a.cols)
                .map(|p| a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs])
                .sum();
        }
    }
    c
}

#[test]
fn matches_naive_product_for_every_transpose_and_split() {
    let (m, k, n) = (130, 67, 90);
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let y: Vec<f32> = (0..k * n)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
        .collect();
    let a = MatRef::rows(&x, m, k);
    let b = MatRef::rows(&y, k, n);
    let at = MatRef::rows(&x, k, m).t(); // a different m×k matrix, stored transposed
    let bt = MatRef::rows(&y, n, k).t();
    for (a, b) in [(a, b), (at, b), (a, bt), (at, bt)] {
        let want = naive(a, b);
        let got = matmul(a, b);
        let mut acc = vec![1f32; m * n];
        matmul_into(a, b, &mut acc, true);
        for i in 0..m * n {
            assert!(
                (got[i] - want[i]).abs() < 1e-4,
                "{i}: {} vs {}",
                got[i],
                want[i]
            );
            assert!((acc[i] - want[i] - 1.0).abs() < 1e-4);
        }
    }
}

#[test]
fn exp_is_within_a_few_ulp_of_libm_and_flushes_masked_scores() {
    for i in 0..=20_000 {
        let x = -87.0 * i as f32 / 20_000.0;
        let (got, want) = (exp(x), x.exp());
        assert!(
            ((got - want) / want).abs() < 4.0 * f32::EPSILON,
            "exp({x}) = {got}, libm {want}"
        );
    }
    assert_eq!(exp(0.0), 1.0);
    assert_eq!(exp(-1e9), 0.0);
    assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    assert!(exp(f32::NAN).is_nan());
}

#[test]
fn reductions_cover_the_remainder() {
    let v: Vec<f32> = (0..37).map(|i| i as f32 - 20.0).collect();
    assert_eq!(sum(&v), v.iter().sum::<f32>());
    assert_eq!(max(&v), 16.0);
    assert_eq!(dot(&v, &v), v.iter().map(|x| x * x).sum::<f32>());
}
