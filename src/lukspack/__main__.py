from __future__ import annotations

from lukspack.cli import main

if __name__ == "__main__":
    main()
