"""Scenario 1: multi-label classification in a TensorFlow custom loop with ``tf.clip_by_global_norm``.

Each sample carries any number of 10 labels; the model outputs one logit per
label and trains with binary cross-entropy on the sigmoid of each logit. The
loop clips the global gradient norm to ``--clip-norm`` before every update.
Synthetic data: a label is on when a fixed random projection of the 32
features is above a threshold.

    gradprobe profile examples/multilabel_tf.py -- --steps 200
"""

import argparse

import numpy as np
import tensorflow as tf


def make_data(n: int = 4096, features: int = 32, labels: int = 10, seed: int = 0):
    """Features and multi-hot labels (about a third of the labels on per sample)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    projection = rng.normal(size=(features, labels)).astype("float32")
    y = (x @ projection > 2.5).astype("float32")
    return x, y


def build_model(labels: int = 10) -> tf.keras.Model:
    """Two dense layers; the last one gives one logit per label (the sigmoid is in the loss)."""
    return tf.keras.Sequential([
        tf.keras.Input(shape=(32,)),
        tf.keras.layers.Dense(64, activation="relu", name="hidden"),
        tf.keras.layers.Dense(labels, name="logits"),
    ])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip-norm", type=float, default=1.0, help="0: no clipping in the script")
    args = parser.parse_args()

    tf.keras.utils.set_random_seed(0)  # Python, NumPy and TensorFlow (Keras initialisers too)
    x, y = make_data()
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).repeat().batch(args.batch_size)
    model = build_model()
    optimizer = tf.keras.optimizers.Adam(learning_rate=args.lr)
    bce = tf.keras.losses.BinaryCrossentropy(from_logits=True)  # logits in, sigmoid inside the loss

    @tf.function
    def train_step(inputs, targets):
        with tf.GradientTape() as tape:
            loss = bce(targets, model(inputs, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        if args.clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, args.clip_norm)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for step, (inputs, targets) in enumerate(data.take(args.steps)):
        loss = train_step(inputs, targets)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {float(loss):.4f}")
    predicted = tf.cast(model(x) > 0, tf.float32).numpy()
    print(f"label accuracy {np.mean(predicted == y):.3f}")


if __name__ == "__main__":
    main()
