//! The pickle scanner's guards (nesting depth, memo doubling) and the storages it collects from a
//! torch `.pth` pickle.

use whitebox::weights::pickle_scan::{scan, StorageRef, MAX_DEPTH};

#[test]
fn nested_lists_beyond_the_limit_are_refused() {
    let depth = MAX_DEPTH as usize + 10;
    let mut p = vec![0x80, 2];
    p.extend(std::iter::repeat_n(b']', depth));
    p.extend(std::iter::repeat_n(b'a', depth - 1));
    p.push(b'.');
    let e = scan(&p, 1).unwrap_err().to_string();
    assert!(e.contains("nests deeper"), "{e}");
    // a shallow one passes
    let ok = [0x80, 2, b']', b']', b'a', b'.'];
    assert!(scan(&ok, 1).is_ok());
}

#[test]
fn memo_doubling_is_bounded() {
    // x = (); repeat: x = (x, x) via DUP + TUPLE2; 2^k objects from 3k bytes
    let mut p = vec![0x80, 2, b')'];
    for _ in 0..60 {
        p.extend([b'2', 0x86]);
    }
    p.push(b'.');
    let e = scan(&p, 1).unwrap_err().to_string();
    assert!(e.contains("more than"), "{e}");
}

#[test]
fn storage_ids_are_collected() {
    // ('storage', torch.FloatStorage, '0', 'cpu', 6) then BINPERSID
    let mut p = vec![0x80, 2, b'('];
    p.extend([0x8c, 7]);
    p.extend(b"storage");
    p.extend(b"ctorch\nFloatStorage\n");
    p.extend([0x8c, 1, b'0']);
    p.extend([0x8c, 3]);
    p.extend(b"cpu");
    p.extend([b'K', 6, b't', b'Q', b'.']);
    let (st, end) = scan(&p, 1).unwrap();
    assert_eq!(end, p.len());
    assert_eq!(
        st,
        vec![StorageRef {
            key: "0".into(),
            kind: "torch FloatStorage".into(),
            numel: Some(6)
        }]
    );
    assert_eq!(st[0].element_size(), Some(4));
}
