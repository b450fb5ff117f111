"""Cut the float-feature regression set the tabular example trains on: tests/data/diabetes.npz.

    pip install scikit-learn
    python tests/data/cut_diabetes.py

scikit-learn ships the diabetes data of Efron et al. (2004), "Least Angle
Regression": 442 patients, 10 baseline features (age, sex, body-mass index,
blood pressure, six serum measurements), already centred and scaled by
scikit-learn, and a disease-progression score one year later. The score is
standardised here with the training split's mean and std (``y`` in those
units: a constant prediction of the mean scores a test MSE near 1). Every fifth
patient goes to the test split, the rest to training, in the file's order.
Training scores: mean 150.5184, std 77.1805. Arrays (``np.savez_compressed``; sha256 of each
array's bytes, C order):

    x_train  float32[353, 10]  44b33dd16eeba78c16300ab22ff9f2c9ba4e553c622b0413812f6482bb8fb56c
    y_train  float32[353]      3041fe4774ab21a9c84deada676408d560a7b12fdd9a2183f61cdba3c9e26fd3
    x_test   float32[89, 10]   e2077d3d97cae277048a126ebf42434e3828941efdbdd38a690af8a23a59be58
    y_test   float32[89]       1e0f9b4f8e4765b9bb8caf6cd367b3d2bb61390dfb7ba4c00552b72518a05db1
"""

import hashlib
import os

import numpy as np
from sklearn.datasets import load_diabetes

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "diabetes.npz")


def main() -> None:
    features, target = load_diabetes(return_X_y=True)
    test = np.arange(len(target)) % 5 == 0
    mean, std = target[~test].mean(), target[~test].std()
    scores = (target - mean) / std
    arrays = {"x_train": features[~test].astype(np.float32), "y_train": scores[~test].astype(np.float32),
              "x_test": features[test].astype(np.float32), "y_test": scores[test].astype(np.float32)}
    np.savez_compressed(OUTPUT, **arrays)
    print(f"score mean {mean:.4f}, std {std:.4f} (training split)")
    for key, array in arrays.items():
        print(f"{key:8} {array.dtype}{list(array.shape)} {hashlib.sha256(array.tobytes()).hexdigest()}")


if __name__ == "__main__":
    main()
