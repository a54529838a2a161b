"""``python -m bnfold ...`` runs the ``bnfold`` command line."""

from bnfold.cli import main

if __name__ == "__main__":
    main()
