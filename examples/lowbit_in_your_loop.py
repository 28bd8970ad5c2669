"""Your flax nnx training loop, made 4-bit (Sun et al., NeurIPS 2020).

Two changes to an ordinary loop: the Linear layers come from `lowbit.nnx` (INT4 weights and
activations forward, radix-4 FP4 gradients with two-phase rounding backward), and
`lowbit.quantize_updates` puts each update on the 4-bit grid before the optimizer.
"""

import os

import jax
import optax
from flax import nnx

import lowbit
from beyondbp import datasets

STEPS = int(os.environ.get("EXAMPLE_STEPS", 500))


class Net(nnx.Module):
    def __init__(self, rngs):
        self.l1 = lowbit.nnx.Linear(784, 256, rngs=rngs)  # was: nnx.Linear(784, 256, ...)
        self.l2 = lowbit.nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x.reshape(len(x), -1))))


model = Net(nnx.Rngs(0))
tx = optax.chain(
    lowbit.quantize_updates(lowbit.RADIX4_FP4),  # added: 4-bit updates
    optax.sgd(0.05, momentum=0.9),
)
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x, y):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model, x, y):
    return (model(x).argmax(-1) == y).mean()


train, test = datasets.load("mnist_small", "train"), datasets.load("mnist_small", "test")
for _step, (x, y, _) in zip(range(STEPS), datasets.batches(train, 64, epochs=None)):
    loss = train_step(model, optimizer, x, y)
xt, yt, _ = next(datasets.batches(test, len(test), shuffle=False))
print(
    f"4-bit MLP after {STEPS} steps: loss {float(loss):.3f}, test accuracy {float(accuracy(model, xt, yt)):.4f}"
)
