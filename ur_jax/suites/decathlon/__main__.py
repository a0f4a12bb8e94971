"""``python -m ur_jax.suites.decathlon --fake DIR [--domains a,b] [--test-labels]``: writes a
fake ``decathlon-1.0/`` tree (:func:`ur_jax.suites.decathlon.fake.main`), for smoke runs of the
``configs/decathlon_*.py`` configs."""

from ur_jax.suites.decathlon.fake import main

if __name__ == "__main__":
    main()
