"""From photos to what the head trains on: the loader's worker processes (decode, distort,
collate), frozen features through the cache (extract.py), and a concatenation's features read
part by part from each part's own cache (concat.py)."""
