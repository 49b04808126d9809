"""From photos to what the head trains on: the loader's worker processes (decode, distort,
collate), frozen features through the cache (extract.py), and a backbone's features read part by
part from each part's own cache, a concatenation's joined side by side (concat.py)."""
