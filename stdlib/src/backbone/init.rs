//! Seeded weight initialisation that does not go through Burn's global RNG.
//!
//! Burn's CPU backend keeps one RNG for the whole process (`B::seed` sets it), so any other work
//! drawing random numbers at the same time (a head trained in parallel, another test) changes the
//! weights a seed produces. Here every parameter is redrawn from its own stream of our
//! [`Rng`](lortflow_data::dataset::Rng) (stream = the parameter's position in the module), which makes
//! the initial weights a pure function of `(architecture, seed)`, identical on every backend.
//! The distributions are the ones the modules were configured with: Kaiming normal on
//! convolutions (fan-out for torchvision layouts, fan-in for ResNet-32), and on linear layers
//! PyTorch's default `U(±1/√fan_in)` (or Kaiming normal, fan-in, for ResNet-32); `conv-fc`, which
//! has no BatchNorm, keeps PyTorch's defaults everywhere: `U(±1/√fan_in)` for the weights and
//! biases of convolutions and linear layers alike. BatchNorm keeps its constants (γ = 1, β = 0,
//! running mean 0, variance 1).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use lortflow_data::dataset::Rng;

/// Which fan Kaiming-normal convolutions use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InitScheme {
    /// torchvision: conv Kaiming normal fan-out; linear `U(±1/√fan_in)`.
    Torchvision,
    /// LDAM's ResNet-32: conv and linear Kaiming normal fan-in.
    CifarResnet,
    /// PyTorch's layer defaults (`kaiming_uniform_(a=√5)` = `U(±1/√fan_in)`, biases the same):
    /// what a network written in PyTorch without an init of its own starts from.
    PytorchDefault,
}

struct SeededInit {
    seed: u64,
    scheme: InitScheme,
    containers: Vec<String>,
    counter: u64,
    /// The fan-in of the last weight seen, for the bias that follows it.
    fan_in: usize,
}

impl SeededInit {
    fn container(&self) -> Option<&str> {
        self.containers
            .iter()
            .rev()
            .find(|c| {
                matches!(
                    c.as_str(),
                    "Struct:Conv2d" | "Struct:Linear" | "Struct:BatchNorm"
                )
            })
            .map(String::as_str)
    }
}

impl<B: Backend> ModuleMapper<B> for SeededInit {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.containers.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let index = self.counter;
        self.counter += 1;
        let dims = tensor.dims();
        let mut rng = Rng::stream(self.seed, index);
        let n: usize = dims.iter().product();
        let normal = |rng: &mut Rng, std: f64| -> Vec<f32> {
            (0..n).map(|_| (rng.normal() * std) as f32).collect()
        };
        let uniform = |rng: &mut Rng, bound: f64| -> Vec<f32> {
            (0..n)
                .map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32)
                .collect()
        };
        let values = match (self.container(), D) {
            (Some("Struct:Conv2d"), 4) => {
                // [out, in/groups, kh, kw]
                let receptive = dims[2] * dims[3];
                self.fan_in = dims[1] * receptive;
                Some(match self.scheme {
                    InitScheme::Torchvision => {
                        normal(&mut rng, (2.0 / (dims[0] * receptive) as f64).sqrt())
                    }
                    InitScheme::CifarResnet => normal(&mut rng, (2.0 / self.fan_in as f64).sqrt()),
                    InitScheme::PytorchDefault => {
                        uniform(&mut rng, 1.0 / (self.fan_in as f64).sqrt())
                    }
                })
            }
            (Some("Struct:Linear"), 2) => {
                // Burn's layout is [in, out].
                self.fan_in = dims[0];
                Some(match self.scheme {
                    InitScheme::Torchvision | InitScheme::PytorchDefault => {
                        uniform(&mut rng, 1.0 / (dims[0] as f64).sqrt())
                    }
                    InitScheme::CifarResnet => normal(&mut rng, (2.0 / dims[0] as f64).sqrt()),
                })
            }
            // A bias follows its weight in the module's order; PyTorch draws both from the
            // weight's fan-in (convolutions' biases only exist in `conv-fc`).
            (Some("Struct:Linear" | "Struct:Conv2d"), 1) => {
                Some(uniform(&mut rng, 1.0 / (self.fan_in.max(1) as f64).sqrt()))
            }
            _ => None,
        };
        let tensor = match values {
            Some(values) => {
                let require_grad = tensor.is_require_grad();
                Tensor::<B, D>::from_data(
                    TensorData::new(values, dims).convert::<B::FloatElem>(),
                    &tensor.device(),
                )
                .set_require_grad(require_grad)
            }
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Redraws the weights of `module` from `seed` (see the module docs).
pub(crate) fn seeded_init<B: Backend, M: Module<B>>(module: M, seed: u64, scheme: InitScheme) -> M {
    module.map(&mut SeededInit {
        seed,
        scheme,
        containers: Vec::new(),
        counter: 0,
        fan_in: 1,
    })
}
