"""PyTorch port of the pretrained musicnn taggers (Pons & Serra, ISMIR 2019 LBD).

- :mod:`.wheel` finds (or fetches with pip) the ``musicnn==0.1.0`` wheel holding the weights;
- :mod:`.tf_checkpoint` reads its TensorFlow checkpoints without TensorFlow;
- :mod:`.network` is the network, log-mel front end included, and the TF -> torch name table;
- :mod:`.pretrained` converts once to safetensors in the cache and loads from there;
- :mod:`.target` holds the ``musicnn-mtt`` / ``musicnn-msd`` target models.

See ``docs/musicnn.md`` for the comparison with the TensorFlow original.
"""
