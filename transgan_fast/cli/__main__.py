"""`python -m transgan_fast.cli` (as `torchrun ... -m transgan_fast.cli train` needs)."""
from . import main

main()
