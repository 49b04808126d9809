"""Using a trained run: the Predictor (a run loaded once), predict and evaluate over many photos,
calibration and `--reject`, the ONNX/TorchScript export and its standalone client, `graft serve`."""
