"""Healthy (Keras): a small CNN trained with model.fit and Adam on separable 16x16 images."""
import keras
import numpy as np

rng = np.random.default_rng(0)
templates = rng.normal(size=(4, 16, 16, 1)).astype("float32")
y = rng.integers(0, 4, 512)
x = templates[y] + 0.5 * rng.normal(size=(512, 16, 16, 1)).astype("float32")
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                          keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                          keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])
model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, batch_size=32, epochs=6, verbose=0, shuffle=False)
