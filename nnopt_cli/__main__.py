"""`python -m nnopt_cli ...` is the same as `nnopt ...` (torchrun needs the module form)."""

from nnopt_cli.cli.main import main

if __name__ == "__main__":
    main()
