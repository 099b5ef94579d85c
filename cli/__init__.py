"""The commands: ``modaltune`` (``cli.main``) and the ablation study (``cli.ablation``, run by
``sweeps/ablation.py``). They sit above the three packages they drive, ``modaltune`` (library)
<- ``sweeps`` (studies) <- ``analysis`` (reading them), none of which imports them."""
