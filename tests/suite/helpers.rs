//! The comparison helpers of `tests/common` fail on a NaN or infinite value, on either side, and
//! name the tensor: a golden check that a NaN could pass would prove nothing.

use crate::common::{
    assert_activations, assert_all_close, assert_close, assert_grads, max_abs, max_abs_diff, Golden,
};
use burn::tensor::TensorData;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The panic message of `f`, which must panic.
fn panic_message(f: impl FnOnce()) -> String {
    let e = catch_unwind(AssertUnwindSafe(f)).expect_err("the helper accepted a non-finite value");
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn data(v: &[f32]) -> TensorData {
    TensorData::new(v.to_vec(), [v.len()])
}

#[test]
fn max_abs_and_max_abs_diff_are_nan_when_any_value_is_not_finite() {
    assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 2.0]), 0.5);
    assert_eq!(max_abs(&[-3.0, 2.0]), 3.0);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert!(max_abs_diff(&[1.0, bad], &[1.0, 2.0]).is_nan());
        assert!(max_abs_diff(&[1.0, 2.0], &[bad, 2.0]).is_nan());
        assert!(max_abs(&[bad, 1.0]).is_nan());
    }
}

#[test]
fn assert_close_fails_on_a_nan_or_infinite_tensor_and_names_it() {
    let good = data(&[1.0, 2.0, 3.0]);
    assert_close("good", &good, &good, 0.0);
    for bad in [f32::NAN, f32::INFINITY] {
        let m = panic_message(|| assert_close("logits", &data(&[1.0, bad, 3.0]), &good, 1.0));
        assert!(m.contains("logits") && m.contains("element 1"), "{m}");
        let m = panic_message(|| assert_close("want", &good, &data(&[bad, 2.0, 3.0]), 1.0));
        assert!(m.contains("want") && m.contains("element 0"), "{m}");
    }
    // an all-NaN pair (NaN − NaN) fails as well
    let nan = data(&[f32::NAN; 3]);
    panic_message(|| assert_close("both", &nan, &nan, f32::INFINITY));
    panic_message(|| assert_all_close("slices", &[f32::NAN], &[f32::NAN], 1.0));
}

#[test]
fn assert_grads_fails_on_a_nan_gradient() {
    let golden = Golden {
        tensors: HashMap::from([
            ("grad.w".to_string(), data(&[0.5, -0.25])),
            ("grad.input".to_string(), data(&[1.0])),
        ]),
        meta: HashMap::new(),
    };
    let got = |v: &[f32]| whitebox::weights::StateDict::from([("w".to_string(), data(v))]);
    assert_grads(&golden, "", &got(&[0.5, -0.25]));
    let m = panic_message(|| assert_grads(&golden, "", &got(&[f32::NAN, -0.25])));
    assert!(m.contains("grad.w"), "{m}");
}

#[test]
fn assert_activations_fails_on_a_nan_activation() {
    let golden = Golden {
        tensors: HashMap::from([("act.x".to_string(), data(&[1.0, 2.0]))]),
        meta: HashMap::new(),
    };
    let captured = |v: Vec<f32>| {
        vec![whitebox::model::Captured {
            name: "act.x".into(),
            shape: vec![2],
            values: v,
        }]
    };
    assert_activations(&golden, &captured(vec![1.0, 2.0]));
    let m = panic_message(|| assert_activations(&golden, &captured(vec![1.0, f32::NAN])));
    assert!(m.contains("act.x"), "{m}");
}
