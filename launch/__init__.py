"""The command-line verbs (`python launch/<verb>.py` or the `spatialsep-<verb>` console scripts),
installed as `spatialsep_jax.launch`."""
