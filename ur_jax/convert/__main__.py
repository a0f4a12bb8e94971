"""``python -m ur_jax.convert --arch NAME --src CHECKPOINT --dst DIR`` (see :mod:`ur_jax.convert`)."""

from ur_jax.convert import main

if __name__ == "__main__":
    main()
