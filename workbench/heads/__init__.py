"""The trained last layers: weight imprinting and softmax regression, with their statistics.

May import `core`, `tflite`, `data`, `extract` and `model`. Imprinting: `imprint` (class
sums), `whitening`, `imprint_cv` (choosing the whitening on held-out folds), `calibration`
(8-bit ranges), `coral_format` (Coral's imprinting model), `imprint_head` (the estimator).
Softmax regression: `backprop` (SGD, penalty search), `softmax_head` (the estimator).
`crossval` holds the folds both use.
"""
