"""Training more than the head: the grafted network (classifier.py: a frozen prefix, trainable
stages, the new top), the fine-tuning loop (loop.py) and running it under torchrun
(distributed.py)."""
