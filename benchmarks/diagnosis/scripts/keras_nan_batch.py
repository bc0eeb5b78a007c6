"""Pathology (Keras): a NaN in the data, in batch 21 of the first epoch: fit trains on NaN from there."""
import keras
import numpy as np

rng = np.random.default_rng(0)
x = rng.normal(size=(1024, 16)).astype("float32")
y = x @ rng.normal(size=(16, 1)).astype("float32")
x[21 * 32 + 3, 7] = np.nan
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)])
model.compile(keras.optimizers.SGD(0.01), "mse")
model.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False)
