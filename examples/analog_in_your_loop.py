"""Your optax training loop, with the weights living on simulated memristor crossbars.

One change to an ordinary loop: `analog.program(device)` is chained after the optimizer. It
turns each update into the conductance pulses the devices actually take (finite steps,
asymmetry, noise, bounds) and returns `realized - params`, so after `optax.apply_updates` the
params are exactly what the chip holds. Its state carries the crossbar tiles and an energy ledger.
"""

import os

import jax
import optax

import analog
from beyondbp import datasets, methods, models

STEPS = int(os.environ.get("EXAMPLE_STEPS", 1000))

apply, params = models.mlp(jax.random.key(0), (784, 128, 10))
tx = optax.chain(
    optax.sgd(0.05, momentum=0.9),
    analog.program(analog.presets.TAOX_RERAM),  # added: devices take the step
)
opt_state = tx.init(params)


@jax.jit
def train_step(params, opt_state, x, y):
    def loss_fn(p):
        return methods.cross_entropy(apply(p, x), y)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@jax.jit
def accuracy(params, x, y):
    # params are what the chip holds (program returns realized - params), so this is its accuracy
    return (apply(params, x).argmax(-1) == y).mean()


train, test = datasets.load("mnist_small", "train"), datasets.load("mnist_small", "test")
for _step, (x, y, _) in zip(range(STEPS), datasets.batches(train, 64, epochs=None)):
    params, opt_state, loss = train_step(params, opt_state, x, y)
acc = accuracy(params, *next(datasets.batches(test, len(test), shuffle=False))[:2])
print(
    f"analog (TaOx ReRAM) MLP after {STEPS} steps: loss {float(loss):.3f}, test accuracy {float(acc):.4f}"
)
