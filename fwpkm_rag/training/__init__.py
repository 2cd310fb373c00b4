"""Training the FwPKM language model: recall-ready initialisation, offline data mix, the training loop."""
