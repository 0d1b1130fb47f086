//! Where a step's time goes: wall and CPU time (all threads of the process) per operation class,
//! recorded by the fused operators while profiling is on (`whitebox bench --profile`). Off by
//! default: a disabled span is one relaxed atomic load.
//!
//! CPU time is the process's (`CLOCK_PROCESS_CPUTIME_ID`), so CPU/wall of a class is how many
//! cores it kept busy while it ran. Spans nest: only the outermost one counts, so a class that
//! calls another (a GEMM's backward calling the GEMM) is charged once, to the outer class.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The operation classes of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Token-matrix products (Linear, ISTA, the tied heads) and their backward.
    Gemm,
    /// Per-head attention kernels, forward and backward.
    Attention,
    /// LayerNorm, forward and backward.
    LayerNorm,
    /// Head split/merge copies.
    Copies,
    /// The optimizer update (clipping included).
    Optimizer,
}

impl Class {
    pub const ALL: [Class; 5] = [
        Class::Gemm,
        Class::Attention,
        Class::LayerNorm,
        Class::Copies,
        Class::Optimizer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Gemm => "GEMM",
            Class::Attention => "attention",
            Class::LayerNorm => "LayerNorm",
            Class::Copies => "head copies",
            Class::Optimizer => "optimizer",
        }
    }
}

/// Wall and CPU seconds and calls of one class.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub wall: f64,
    pub cpu: f64,
    pub calls: usize,
}

impl Usage {
    /// Cores kept busy on average (CPU / wall).
    pub fn cores(&self) -> f64 {
        if self.wall > 0.0 {
            self.cpu / self.wall
        } else {
            0.0
        }
    }
    fn add(&mut self, o: Usage) {
        self.wall += o.wall;
        self.cpu += o.cpu;
        self.calls += o.calls;
    }
    pub fn minus(self, o: Usage) -> Usage {
        Usage {
            wall: self.wall - o.wall,
            cpu: self.cpu - o.cpu,
            calls: self.calls.saturating_sub(o.calls),
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<[Usage; Class::ALL.len()]> = Mutex::new(
    [Usage {
        wall: 0.0,
        cpu: 0.0,
        calls: 0,
    }; Class::ALL.len()],
);

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// CPU seconds used so far by every thread of this process.
pub fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Turn recording on or off (totals are kept).
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Totals per class since the start of the process, in [`Class::ALL`] order.
pub fn totals() -> [Usage; Class::ALL.len()] {
    *TOTALS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running measurement, recorded when dropped if it is the outermost one.
pub struct Span {
    start: Option<(Class, Instant, f64)>,
}

/// Start timing `class` (None while profiling is off).
pub fn span(class: Class) -> Option<Span> {
    if !ON.load(Ordering::Relaxed) {
        return None;
    }
    let outer = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get() == 1
    });
    let start = outer.then(|| (class, Instant::now(), process_cpu_seconds()));
    Some(Span { start })
}

impl Drop for Span {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
        if let Some((class, wall, cpu)) = self.start {
            let u = Usage {
                wall: wall.elapsed().as_secs_f64(),
                cpu: process_cpu_seconds() - cpu,
                calls: 1,
            };
            TOTALS.lock().unwrap_or_else(|e| e.into_inner())[class as usize].add(u);
        }
    }
}

/// Run `f` as a span of `class`.
pub fn time<T>(class: Class, f: impl FnOnce() -> T) -> T {
    let _span = span(class);
    f()
}

/// Wall and CPU time of `f` (whatever profiling says).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Usage) {
    let (t, c) = (Instant::now(), process_cpu_seconds());
    let out = f();
    let u = Usage {
        wall: t.elapsed().as_secs_f64(),
        cpu: process_cpu_seconds() - c,
        calls: 1,
    };
    (out, u)
}

/// The CPU's model name and the vector/matrix ISA flags that matter here (from `/proc/cpuinfo`).
pub fn cpu_summary() -> (String, Vec<String>) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let flags = field("flags").unwrap_or_default();
    let want = [
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    ];
    let have = want
        .iter()
        .filter(|w| flags.split_whitespace().any(|f| f == **w))
        .map(|s| s.to_string())
        .collect();
    (model, have)
}
