"""Your optax training loop, with forward gradients instead of backprop (Baydin et al. 2022).

One change to an ordinary loop: instead of `jax.grad(loss)(params)` feeding the optimizer,
`fwdgrad.forward_gradient` estimates the gradient from `jax.jvp` calls along random tangents
(no backward pass, no stored activations). It reads the loss through the `loss_fn=` extra
argument and keeps its PRNG key in its own state.
"""

import os

import jax
import optax

import fwdgrad
from beyondbp import datasets, methods, models

STEPS = int(os.environ.get("EXAMPLE_STEPS", 3000))

apply, params = models.mlp(jax.random.key(0), (784, 128, 10))
tx = optax.chain(
    fwdgrad.forward_gradient(num_tangents=4),  # was: jax.grad; 4 jvps share one forward pass
    optax.sgd(2e-3),  # small: the estimate's variance is (n-1)|g|^2/K
)
opt_state = tx.init(params)


@jax.jit
def train_step(params, opt_state, x, y):
    def loss_fn(p):
        return methods.cross_entropy(apply(p, x), y)

    updates, opt_state = tx.update(None, opt_state, params, loss_fn=loss_fn)
    return optax.apply_updates(params, updates), opt_state, loss_fn(params)


train, test = datasets.load("mnist_small", "train"), datasets.load("mnist_small", "test")
for _step, (x, y, _) in zip(range(STEPS), datasets.batches(train, 64, epochs=None)):
    params, opt_state, loss = train_step(params, opt_state, x, y)
xt, yt, _ = next(datasets.batches(test, len(test), shuffle=False))
acc = (apply(params, xt).argmax(-1) == yt).mean()
print(
    f"forward-gradient MLP after {STEPS} steps: loss {float(loss):.3f}, test accuracy {float(acc):.4f}"
)
