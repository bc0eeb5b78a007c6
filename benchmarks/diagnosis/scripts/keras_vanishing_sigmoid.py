"""Pathology (Keras): a 10-layer sigmoid MLP: gradients vanish towards the input."""
import keras
import numpy as np

rng = np.random.default_rng(0)
centers = 3 * rng.normal(size=(4, 16))
y = rng.integers(0, 4, 1024)
x = (centers[y] + rng.normal(size=(1024, 16))).astype("float32")
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((16,))] + [keras.layers.Dense(32, activation="sigmoid") for _ in range(10)]
                         + [keras.layers.Dense(4)])
model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, batch_size=64, epochs=6, verbose=0, shuffle=False)
