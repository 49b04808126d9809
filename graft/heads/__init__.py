"""The new softmax on cached features and how it is chosen: the AdamW-trained layer (softmax.py),
the L-BFGS linear probe (probe.py), the choice between them by cross-validation on the training
photos (search.py) over deterministic stratified folds (folds.py), and the metrics they report.
Shared with fine-tuning: the AdamW settings (optimisation.py) and early stopping (early_stopping.py)."""
