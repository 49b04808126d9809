"""Training more than the head: the grafted network (classifier.py: a frozen prefix, trainable
stages, the new top), what a run is asked and gives back (config.py), the trainer that runs the
epochs (loop.py) and what happens around them (callbacks.py: the epoch log, early stopping,
checkpoints, Ctrl-C), and running it under torchrun (distributed.py)."""
