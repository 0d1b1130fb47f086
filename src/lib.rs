//! whitebox: CRATE white-box transformers ("White-Box Transformers via Sparse Rate Reduction")
//! on burn. Model code is generic over `B: Backend`; the CPU default is `Autodiff<Flex>`.

pub mod alloc;
pub mod atomic;
pub mod bench;
pub mod data;
pub mod infer;
pub mod measure;
pub mod model;
pub mod text;
pub mod train;
pub mod viz;
pub mod weights;

/// The CPU backend used by the tests.
pub type CpuBackend = burn::backend::Flex;
/// The CPU backend with autodiff.
pub type CpuAutodiff = burn::backend::Autodiff<CpuBackend>;

/// Backend of the CLI: flex on CPU, or CUDA with `--features cuda`.
#[cfg(not(feature = "cuda"))]
pub type InferBackend = CpuBackend;
#[cfg(feature = "cuda")]
pub type InferBackend = burn::backend::Cuda;
pub type TrainBackend = burn::backend::Autodiff<InferBackend>;
