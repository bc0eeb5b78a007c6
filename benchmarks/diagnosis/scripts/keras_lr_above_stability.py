"""Pathology (Keras): full-batch gradient descent on least squares with lr 1.3x the stability limit
2/lambda_max: the error along the top eigenvector grows 1.6x per epoch from the start."""
import keras
import numpy as np

rng = np.random.default_rng(0)
x = rng.normal(size=(512, 16)).astype("float32")
y = x @ rng.normal(size=(16, 1)).astype("float32")
a = np.concatenate([x, np.ones((len(x), 1), "float32")], 1)
lam = float(np.linalg.eigvalsh(2 * a.T @ a / len(x)).max())
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(1)])
model.compile(keras.optimizers.SGD(1.3 * 2 / lam), "mse")
model.fit(x, y, batch_size=len(x), epochs=60, verbose=0, shuffle=False)
