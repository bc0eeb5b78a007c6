"""Scenario 2 (TensorFlow): multi-task learning with a shared trunk, two heads and summed losses.

The same two tasks as ``multitask_torch.py`` (classification and a regression
target in raw units) in a Keras model trained by an eager ``GradientTape``
loop; the global norm is clipped to 1 with ``tf.clip_by_global_norm`` (the
report shows that with these losses it clips every step). The tape is
persistent so that ``gradprobe.task_gradients`` can take each task's gradient on
the shared trunk before the loop takes the gradient of the summed loss.
``--balance`` standardises the regression target.

    gradprobe profile examples/multitask_tf.py -- --steps 120
"""

import argparse

import numpy as np
import tensorflow as tf

import gradprobe


def make_data(n: int = 4096, seed: int = 0):
    """Features, a 4-class label and a regression target around 50 (standard deviation about 10)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20)).astype("float32")
    w_class, w_price = rng.normal(size=(20, 4)), rng.normal(size=20)
    label = (x @ w_class).argmax(axis=1)
    price = (50 + 10 * np.tanh(x @ w_price / 4) + rng.normal(size=n)).astype("float32")
    return x, label, price


class MultiTaskModel(tf.keras.Model):
    """A shared trunk and one head per task."""

    def __init__(self):
        super().__init__()
        self.trunk = tf.keras.Sequential([tf.keras.layers.Dense(64, activation="relu"),
                                          tf.keras.layers.Dense(64, activation="relu")], name="trunk")
        self.digit_head = tf.keras.layers.Dense(4, name="digit_head")
        self.price_head = tf.keras.layers.Dense(1, name="price_head")

    def call(self, x):
        features = self.trunk(x)
        return self.digit_head(features), tf.squeeze(self.price_head(features), 1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip-norm", type=float, default=1.0, help="0: no clipping in the script")
    parser.add_argument("--task-every", type=int, default=5)
    parser.add_argument("--balance", action="store_true", help="standardise the regression target")
    args = parser.parse_args()

    tf.keras.utils.set_random_seed(0)  # Python, NumPy and TensorFlow (Keras initialisers too)
    rng = np.random.default_rng(1)
    x, label, price = make_data()
    if args.balance:
        price = (price - price.mean()) / price.std()
    model = MultiTaskModel()
    model(x[:1])
    optimizer = tf.keras.optimizers.Adam(learning_rate=args.lr)
    ce = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    mse = tf.keras.losses.MeanSquaredError()
    for step in range(args.steps):
        idx = rng.integers(0, len(x), args.batch_size)
        with tf.GradientTape(persistent=True) as tape:
            digit_logits, price_pred = model(x[idx], training=True)
            loss_digit = ce(label[idx], digit_logits)
            loss_price = mse(price[idx], price_pred)
            loss = loss_digit + loss_price
        gradprobe.task_gradients({"digit": loss_digit, "price": loss_price}, shared=model.trunk, tape=tape,
                                 every=args.task_every)
        grads = tape.gradient(loss, model.trainable_variables)
        del tape
        if args.clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, args.clip_norm)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if step % 40 == 0 or step == args.steps - 1:
            print(f"step {step}: digit loss {float(loss_digit):.4f}, price loss {float(loss_price):.4f}")


if __name__ == "__main__":
    main()
