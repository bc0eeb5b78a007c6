"""Keras model.fit on a regression whose batches are occasionally corrupted (2% of batches with
targets x300). Adam 3e-3, 400 steps; prints the validation MSE on clean held-out data."""

import numpy as np

import keras

rng = np.random.default_rng()
w1, w2 = rng.normal(size=(20, 32)), rng.normal(size=(32, 1)) / 6


def teacher(x):
    return (np.tanh(x @ w1) @ w2).astype("float32")


x = rng.normal(size=(400 * 32, 20)).astype("float32")
y = teacher(x) + 0.05 * rng.normal(size=(len(x), 1)).astype("float32")
for b in rng.choice(400, 8, replace=False):
    y[b * 32:(b + 1) * 32] *= 300.0
x_val = rng.normal(size=(2048, 20)).astype("float32")
model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)])
model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
print(f"val_metric={model.evaluate(x_val, teacher(x_val), verbose=0):.6g}")
