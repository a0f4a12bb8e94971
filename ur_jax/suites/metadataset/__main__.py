"""``python -m ur_jax.suites.metadataset --fake DIR [--sources a,b] [--seed N]``: writes a fake
records directory in the official converted format (:func:`ur_jax.suites.metadataset.fake.
write_fake_records`), for smoke runs of the ``configs/metadataset_*.py`` configs."""

from ur_jax.suites.metadataset.fake import main

if __name__ == "__main__":
    main()
