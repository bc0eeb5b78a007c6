"""Scenario 3 (Keras): a small CNN on MNIST-shaped data trained with ``model.fit``.

The same synthetic 28x28 digits as ``mnist_cnn_torch.py``; the Keras way to
clip the global norm is the optimizer's ``global_clipnorm``, which gradprobe
records (threshold, post-clip norm and scale per step).

    gradprobe profile examples/mnist_cnn_keras.py -- --epochs 1
"""

import argparse

import keras
import numpy as np


def make_data(n: int = 3200, seed: int = 0):
    """MNIST-shaped images (n, 28, 28, 1) in [0, 1] and labels 0-9."""
    rng = np.random.default_rng(seed)
    templates = (rng.random((10, 28, 28, 1)) > 0.8).astype("float32")
    labels = rng.integers(0, 10, n)
    images = np.clip(0.7 * templates[labels] + 0.3 * rng.random((n, 28, 28, 1)), 0, 1).astype("float32")
    return images, labels


def build_model() -> keras.Model:
    """conv(16) - pool - conv(32) - pool - dense(128) - dense(10)."""
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clipnorm", type=float, default=1.0, help="global_clipnorm of the optimizer (0: none)")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    images, labels = make_data()
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=args.lr, global_clipnorm=args.clipnorm or None),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(images, labels, epochs=args.epochs, batch_size=args.batch_size, verbose=2)


if __name__ == "__main__":
    main()
