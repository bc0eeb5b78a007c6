"""``python -m gradprobe``: the command-line interface."""

from gradprobe.cli import main

if __name__ == "__main__":
    main()
