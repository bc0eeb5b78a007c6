"""Healthy (Keras): an MLP regression with SGD and clipnorm=5.0 as a guard that rarely fires."""
import keras
import numpy as np

rng = np.random.default_rng(0)
x = rng.normal(size=(512, 16)).astype("float32")
y = x @ rng.normal(size=(16, 1)).astype("float32")
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)])
model.compile(keras.optimizers.SGD(0.01, clipnorm=5.0), "mse")
model.fit(x, y, batch_size=32, epochs=10, verbose=0, shuffle=False)
