"""Reference implementations of the models the notebooks build, for later notebooks to import.

One module per family of models (``unet``, ``vit``, ``sits``, …); the notebooks build each model in
plain sight first and then use the version here.
"""
